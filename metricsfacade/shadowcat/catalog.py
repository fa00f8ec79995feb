"""The shadowcat_* metric catalog: the metrics of an MCP proxy, in Prometheus' naming.

Help texts are Shadowcat's own, kept word for word so dashboards built on the Rust
proxy still apply (``shadowcat_goroutines`` counts asyncio tasks here, though its help
says tokio). Durations are timers (Prometheus
histograms of seconds; StatsD and Datadog get milliseconds).
``shadowcat_request_duration_seconds`` sets no buckets: it takes the config's
``histogram_buckets``, else the facade's defaults (1 ms to 5 s).

With several worker processes (Prometheus' ``multiprocess_dir``) gauges are summed over
the live workers (sessions, memory, CPU, tasks, threads, fds: the service's totals), except
uptime (the oldest live worker's, ``max``) and circuit-breaker state (``max``: a breaker
open in any worker shows).
"""

from __future__ import annotations

import attrs

from metricsfacade.spec import Kind

REQUEST_LABELS = ("method", "transport", "status")
SIZE_BUCKETS = (100.0, 1000.0, 10000.0, 100000.0, 1000000.0)


@attrs.frozen
class CatalogEntry:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    #: None: the configured default (``histogram_buckets``, else DEFAULT_BUCKETS)
    buckets: tuple[float, ...] | None = None
    #: how a gauge merges over worker processes (see the module's docstring)
    multiprocess_mode: str = "sum"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "shadowcat_requests_total",
        Kind.COUNTER,
        "Total number of requests processed",
        REQUEST_LABELS,
    ),
    CatalogEntry(
        "shadowcat_request_duration_seconds",
        Kind.TIMER,
        "Request duration in seconds",
        REQUEST_LABELS,
    ),
    CatalogEntry(
        "shadowcat_request_size_bytes",
        Kind.HISTOGRAM,
        "Request size in bytes",
        ("method", "transport"),
        SIZE_BUCKETS,
    ),
    CatalogEntry(
        "shadowcat_response_size_bytes",
        Kind.HISTOGRAM,
        "Response size in bytes",
        ("method", "transport"),
        SIZE_BUCKETS,
    ),
    CatalogEntry("shadowcat_active_sessions", Kind.GAUGE, "Number of active sessions"),
    CatalogEntry(
        "shadowcat_session_duration_seconds",
        Kind.TIMER,
        "Session duration in seconds",
        (),
        (1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0),
    ),
    CatalogEntry(
        "shadowcat_proxy_latency_seconds",
        Kind.TIMER,
        "Additional latency introduced by proxy",
        ("upstream",),
        (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1),
    ),
    CatalogEntry(
        "shadowcat_upstream_errors_total",
        Kind.COUNTER,
        "Total upstream errors by type",
        ("upstream", "error_type"),
    ),
    CatalogEntry(
        "shadowcat_circuit_breaker_state",
        Kind.GAUGE,
        "Circuit breaker state (0=closed, 1=open, 2=half-open)",
        ("upstream",),
        multiprocess_mode="max",
    ),
    CatalogEntry(
        "shadowcat_rate_limit_exceeded_total",
        Kind.COUNTER,
        "Number of rate limit violations",
        ("limit_type", "client"),
    ),
    CatalogEntry("shadowcat_memory_usage_bytes", Kind.GAUGE, "Current memory usage in bytes"),
    CatalogEntry("shadowcat_cpu_usage_percent", Kind.GAUGE, "Current CPU usage percentage"),
    CatalogEntry("shadowcat_goroutines", Kind.GAUGE, "Number of active goroutines (tokio tasks)"),
    CatalogEntry(
        "shadowcat_tape_size_bytes",
        Kind.HISTOGRAM,
        "Size of recorded tapes",
        ("transport",),
        (1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0),
    ),
    CatalogEntry(
        "shadowcat_tape_operations_total", Kind.COUNTER, "Tape operations by type", ("operation",)
    ),
    CatalogEntry(
        "shadowcat_uptime_seconds", Kind.GAUGE, "Process uptime in seconds", multiprocess_mode="max"
    ),
    CatalogEntry("shadowcat_threads", Kind.GAUGE, "Number of OS threads in the process"),
    CatalogEntry("shadowcat_open_fds", Kind.GAUGE, "Number of open file descriptors"),
)
