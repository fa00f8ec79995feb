"""Backends, and building those a config names (see ``metricsfacade.plugins``)."""

from __future__ import annotations

from metricsfacade import plugins
from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.config import MetricsConfig

__all__ = ["Backend", "PushBackend", "create_backends", "needs_background_collection"]


def create_backends(config: MetricsConfig) -> list[Backend]:
    """Build every configured backend from its own table; if one fails, close those built."""
    backends: list[Backend] = []
    try:
        for reference in config.backends:
            cls = plugins.backend_class(reference)
            cls.require()
            backends.append(cls.build(_settings(config, cls), dict(config.common_labels)))
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends


def needs_background_collection(config: MetricsConfig) -> bool:
    """Whether some configured backend reads values that no scrape of this process
    refreshes, so collectors must refresh them on a thread of their own."""
    for reference in config.backends:
        cls = plugins.backend_class(reference)
        if not cls.refreshed_by_scrapes(_settings(config, cls)):
            return True
    return False


def _settings(config: MetricsConfig, cls: type[Backend]) -> object:
    return config.table(cls.name) if cls.Settings is not None else None
