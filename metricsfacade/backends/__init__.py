"""Backends, and building those a config names (see ``metricsfacade.plugins``)."""

from __future__ import annotations

from metricsfacade import plugins
from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.config import MetricsConfig

__all__ = ["Backend", "PushBackend", "create_backends"]


def create_backends(config: MetricsConfig) -> list[Backend]:
    """Build every configured backend from its own table; if one fails, close those built."""
    backends: list[Backend] = []
    try:
        for reference in config.backends:
            cls = plugins.backend_class(reference)
            cls.require()
            settings = config.table(cls.name) if cls.Settings is not None else None
            backends.append(cls.build(settings, dict(config.common_labels)))
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends
