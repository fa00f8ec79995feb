"""``ShadowcatMetrics``: the catalog declared on a facade, with one-call helpers for proxy code."""

from __future__ import annotations

from typing import Any, TypeVar

from metricsfacade import get_metrics
from metricsfacade.config import MetricsConfig
from metricsfacade.facade import Metrics
from metricsfacade.handles import Counter, Gauge, Histogram, HistogramChild, MetricHandle, Timer
from metricsfacade.shadowcat.catalog import CATALOG, CatalogEntry
from metricsfacade.shadowcat.labels import OTHER, BoundedValues, method_matcher
from metricsfacade.shadowcat.settings import MCP_METHODS, ShadowcatSettings
from metricsfacade.shadowcat.tracking import (
    CANCELLED,
    ERROR,
    OK,
    TIMEOUT,
    RequestSeries,
    RequestTracker,
    Session,
)
from metricsfacade.spec import Kind

#: Most distinct method names kept (wildcard families could otherwise admit any name).
MAX_METHODS = 200
BREAKER_STATES = {"closed": 0, "open": 1, "half_open": 2, "half-open": 2}
STDIO_STATUSES = frozenset({OK, ERROR, TIMEOUT, CANCELLED})


def declare(facade: Metrics, entry: CatalogEntry) -> MetricHandle[Any]:
    """Declare one catalog entry on a facade (idempotent: the same handle every time)."""
    labels, buckets = entry.labels, entry.buckets
    if entry.kind is Kind.COUNTER:
        return facade.counter(entry.name, entry.help, labels)
    if entry.kind is Kind.GAUGE:
        return facade.gauge(
            entry.name, entry.help, labels, multiprocess_mode=entry.multiprocess_mode
        )
    if entry.kind is Kind.TIMER:
        return facade.timer(entry.name, entry.help, labels, buckets)
    return facade.histogram(entry.name, entry.help, labels, buckets)


H = TypeVar("H", bound=MetricHandle[Any])


def typed_handle(handles: dict[str, MetricHandle[Any]], name: str, handle_type: type[H]) -> H:
    handle = handles[name]
    assert isinstance(handle, handle_type), f"{name} is declared as a {type(handle).__name__}"
    return handle


def _status_label(status: object) -> str:
    """``ok``/``error``/``timeout``/``cancelled`` on stdio, an HTTP code on HTTP, else other."""
    if isinstance(status, str) and status in STDIO_STATUSES:
        return status
    try:
        code = int(status)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return OTHER
    return str(code) if 100 <= code <= 599 else OTHER


class ShadowcatMetrics:
    """The whole shadowcat_* catalog on one facade (the global one by default).

    ``method`` label values outside the allowed MCP methods become ``other``, and so do rate
    limited clients past the first ``max_clients``: see the ``[shadowcat]`` config table.
    """

    def __init__(self, facade: Metrics | None = None, config: MetricsConfig | None = None) -> None:
        self.facade = facade = facade if facade is not None else get_metrics()
        settings: ShadowcatSettings = (config or facade.config or MetricsConfig()).table(
            "shadowcat"
        )
        handles = {entry.name: declare(facade, entry) for entry in CATALOG}
        self.requests = typed_handle(handles, "shadowcat_requests_total", Counter)
        self.request_duration = typed_handle(handles, "shadowcat_request_duration_seconds", Timer)
        self.request_size = typed_handle(handles, "shadowcat_request_size_bytes", Histogram)
        self.response_size = typed_handle(handles, "shadowcat_response_size_bytes", Histogram)
        self.active_sessions = typed_handle(handles, "shadowcat_active_sessions", Gauge)
        self.session_duration = typed_handle(handles, "shadowcat_session_duration_seconds", Timer)
        self.proxy_latency = typed_handle(handles, "shadowcat_proxy_latency_seconds", Timer)
        self.upstream_errors = typed_handle(handles, "shadowcat_upstream_errors_total", Counter)
        self.breaker_state = typed_handle(handles, "shadowcat_circuit_breaker_state", Gauge)
        self.rate_limited = typed_handle(handles, "shadowcat_rate_limit_exceeded_total", Counter)
        self.tape_sizes = typed_handle(handles, "shadowcat_tape_size_bytes", Histogram)
        self.tape_operations = typed_handle(handles, "shadowcat_tape_operations_total", Counter)
        exact, in_family = method_matcher(settings.methods)
        self.method_label = BoundedValues(MAX_METHODS, in_family, always=exact)
        self.client_label = BoundedValues(settings.max_clients)
        self.status_label = _status_label
        self._request_series: dict[tuple[object, str], RequestSeries] = {}
        self._latency_series: dict[str, HistogramChild] = {}

    def request_series(self, method: object, transport: str) -> RequestSeries:
        """The children one (method, transport) records to, resolved once."""
        series = self._request_series.get((method, transport))
        if series is None:
            label = self.method_label(method)
            series = RequestSeries(self, label, transport)
            if label != OTHER:  # keys that map to "other" are not kept: memory stays bounded
                self._request_series[(method, transport)] = series
        return series

    def latency_series(self, upstream: str) -> HistogramChild:
        child = self._latency_series.get(upstream)
        if child is None:
            child = self._latency_series[upstream] = self.proxy_latency.labels(upstream)
        return child

    # -- requests and sessions -------------------------------------------------------------

    def track_request(
        self, method: str, transport: str, upstream: str | None = None
    ) -> RequestTracker:
        """``with``/``async with ... as req`` or ``@decorator``: count, duration, status,
        sizes (``req.request_size(n)``, ``req.response_size(n)``) and, with ``upstream``,
        the latency the proxy added (mark the wait with ``req.upstream_wait()``)."""
        return self.start_request(method, transport, upstream)

    def start_request(
        self,
        method: str,
        transport: str,
        upstream: str | None = None,
        started_at: float | None = None,
    ) -> RequestTracker:
        """A request starting now (or at ``started_at``, a ``perf_counter()`` reading); for
        message-passing code, call ``finish()`` when its response goes out."""
        latency = self.latency_series(upstream) if upstream is not None else None
        return RequestTracker(self.request_series(method, transport), latency, started_at)

    def session(self) -> Session:
        """``with``/``async with``: a session from start to end, errors and cancellation too."""
        return Session(self)

    # -- one-call events -------------------------------------------------------------------

    def circuit_breaker_state(self, upstream: str, state: str | int) -> None:
        """``closed``/``open``/``half_open`` (or 0/1/2)."""
        value = BREAKER_STATES.get(state) if isinstance(state, str) else state
        if value not in (0, 1, 2):
            self.facade.reject_recording(
                self.breaker_state.spec.name, "invalid_value", f"breaker state {state!r}"
            )
            return
        self.breaker_state.labels(upstream).set(value)

    def rate_limit_exceeded(self, limit_type: str, client: str) -> None:
        self.rate_limited.labels(limit_type, self.client_label(client)).inc()

    def upstream_error(self, upstream: str, error_type: str) -> None:
        self.upstream_errors.labels(upstream, error_type).inc()

    def tape_size(self, transport: str, size_bytes: float) -> None:
        self.tape_sizes.labels(transport).observe(size_bytes)

    def tape_operation(self, operation: str) -> None:
        self.tape_operations.labels(operation).inc()


__all__ = ["MCP_METHODS", "ShadowcatMetrics", "declare"]
