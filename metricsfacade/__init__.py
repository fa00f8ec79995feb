"""metricsfacade: one recorder API for Prometheus, StatsD and Datadog.

    import metricsfacade as mf
    m = mf.configure({"port": 9464, "backends": ["prometheus"]})
    requests = m.counter("demo_requests_total", "Requests handled", labels=["method"])
    requests.labels("ping").inc()

Metrics may be declared on the global facade (``mf.counter(...)``, ``mf.get_metrics()``) before
``configure()`` runs; they bind when it does. ``mf.Metrics(...)`` makes independent facades.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from metricsfacade.backends.prometheus import PrometheusSettings
from metricsfacade.config import ConfigSource, MetricsConfig, load_config
from metricsfacade.errors import (
    ConfigError,
    DeclarationError,
    EndpointError,
    MetricsError,
    MissingExtraError,
    RecordError,
)
from metricsfacade.facade import OVERFLOW_LABEL_VALUE, Metrics
from metricsfacade.handles import (
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Timer,
)
from metricsfacade.spec import DEFAULT_BUCKETS
from metricsfacade.timing import Timing

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BUCKETS",
    "OVERFLOW_LABEL_VALUE",
    "ConfigError",
    "ConfigSource",
    "Counter",
    "CounterChild",
    "CustomMetrics",
    "DeclarationError",
    "EndpointError",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metrics",
    "MetricsConfig",
    "MetricsError",
    "MissingExtraError",
    "PrometheusSettings",
    "RecordError",
    "Timer",
    "Timing",
    "configure",
    "counter",
    "gauge",
    "get_metrics",
    "histogram",
    "load_config",
    "record",
    "register_custom_metric",
    "timer",
]

_global = Metrics()


def get_metrics() -> Metrics:
    """The process-wide facade (unconfigured, recording nowhere, until ``configure()``)."""
    return _global


def configure(source: ConfigSource = None, *, environ: Mapping[str, str] | None = None) -> Metrics:
    """Configure the global facade from a dict, a MetricsConfig or a TOML path; returns it."""
    return _global.configure(source, environ=environ)


def counter(name: str, help: str, labels: Iterable[str] | None = None) -> Counter:
    """Declare a counter on the global facade."""
    return _global.counter(name, help, labels)


def gauge(name: str, help: str, labels: Iterable[str] | None = None) -> Gauge:
    """Declare a gauge on the global facade."""
    return _global.gauge(name, help, labels)


def histogram(
    name: str,
    help: str,
    labels: Iterable[str] | None = None,
    buckets: Sequence[float] | None = None,
) -> Histogram:
    """Declare a histogram on the global facade."""
    return _global.histogram(name, help, labels, buckets)


def timer(
    name: str,
    help: str,
    labels: Iterable[str] | None = None,
    buckets: Sequence[float] | None = None,
) -> Timer:
    """Declare a timer (a histogram of seconds) on the global facade."""
    return _global.timer(name, help, labels, buckets)


# Last: the custom registry imports get_metrics from this module.
from metricsfacade.custom import CustomMetrics, record, register_custom_metric  # noqa: E402
