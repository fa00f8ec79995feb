"""Backend registry. A backend's module (and its library) is imported only when configured."""

from __future__ import annotations

import importlib

from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.config import MetricsConfig
from metricsfacade.errors import MissingExtraError

#: name -> (module, class, the third-party module it needs, the extra that installs it)
_REGISTRY: dict[str, tuple[str, str, str | None, str | None]] = {
    "prometheus": (
        "metricsfacade.backends.prometheus",
        "PrometheusBackend",
        "prometheus_client",
        "prometheus",
    ),
    "statsd": ("metricsfacade.backends.statsd", "StatsdBackend", None, None),
    "datadog": ("metricsfacade.backends.datadog", "DatadogBackend", "datadog", "datadog"),
    "memory": ("metricsfacade.backends.memory", "MemoryBackend", None, None),
}

__all__ = ["Backend", "PushBackend", "backend_class", "create_backends"]


def backend_class(name: str) -> type[Backend]:
    module_name, class_name, needs, extra = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if needs is not None and extra is not None and missing == needs:
            raise MissingExtraError(name, needs, extra) from exc
        raise
    cls: type[Backend] = getattr(module, class_name)
    return cls


def create_backends(config: MetricsConfig) -> list[Backend]:
    """Build every configured backend; if one fails, close those already built."""
    backends: list[Backend] = []
    try:
        for name in config.backends:
            backends.append(backend_class(name).from_config(config))
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends
