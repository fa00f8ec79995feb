"""Shadowcat's metrics: the shadowcat_* catalog, proxy helpers and the system collector.

import metricsfacade as mf
from metricsfacade.shadowcat import ShadowcatMetrics, SystemCollector

metrics = mf.configure("shadowcat.toml")
shadowcat = ShadowcatMetrics(metrics)
SystemCollector(metrics)
async with shadowcat.session():
    async with shadowcat.track_request("tools/call", "stdio", upstream="local") as req:
        req.request_size(len(raw))
        with req.upstream_wait():
            response = await forward(raw)
        req.response_size(len(response))
"""

from metricsfacade.shadowcat.catalog import CATALOG, CatalogEntry
from metricsfacade.shadowcat.labels import OTHER
from metricsfacade.shadowcat.metrics import ShadowcatMetrics
from metricsfacade.shadowcat.system import SystemCollector
from metricsfacade.shadowcat.tracking import (
    CANCELLED,
    ERROR,
    OK,
    TIMEOUT,
    RequestTracker,
    Session,
)

__all__ = [
    "CANCELLED",
    "CATALOG",
    "ERROR",
    "OK",
    "OTHER",
    "TIMEOUT",
    "CatalogEntry",
    "RequestTracker",
    "Session",
    "ShadowcatMetrics",
    "SystemCollector",
]
