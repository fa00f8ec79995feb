"""metricsfacade in web services: mountable exposition and probe apps, request middleware.

Importing this package needs no web framework: everything works against the ASGI and WSGI
specifications, and a framework is consulted only to find its matched route. The names
below load on first use, because the facade's own endpoint imports ``web.routes``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metricsfacade.web.apps import MetricsASGIApp, MetricsWSGIApp
    from metricsfacade.web.asgi import ASGIMetricsMiddleware
    from metricsfacade.web.recorder import RequestInfo, RequestLabel
    from metricsfacade.web.templates import ROUTE_KEY
    from metricsfacade.web.wsgi import WSGIMetricsMiddleware

_HOMES = {
    "ASGIMetricsMiddleware": "asgi",
    "MetricsASGIApp": "apps",
    "MetricsWSGIApp": "apps",
    "ROUTE_KEY": "templates",
    "RequestInfo": "recorder",
    "RequestLabel": "recorder",
    "WSGIMetricsMiddleware": "wsgi",
}

__all__ = [
    "ROUTE_KEY",
    "ASGIMetricsMiddleware",
    "MetricsASGIApp",
    "MetricsWSGIApp",
    "RequestInfo",
    "RequestLabel",
    "WSGIMetricsMiddleware",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
