"""The custom-metric registry metrics named at run time, not in code.

``register_custom_metric(name, help, buckets)`` declares a histogram and returns it;
``record(name, value)`` observes into a histogram, declaring it on first use. Counters and
gauges work the same way. Custom metrics are ordinary facade metrics: they reach every
backend, count against the cardinality limit, and a conflicting declaration raises. Recording
by name never raises (outside strict mode): an invalid name, a kind or label conflict, or a
new name past the cardinality limit is counted in
``metricsfacade_dropped_total{metric="custom"}`` and dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from metricsfacade import get_metrics
from metricsfacade.errors import DeclarationError, RecordError
from metricsfacade.facade import Metrics
from metricsfacade.handles import Counter, Gauge, Histogram, MetricHandle

H = TypeVar("H", bound=MetricHandle[Any])

#: The ``metric`` label of drops whose name cannot be trusted as a label value.
CUSTOM = "custom"


class CustomMetrics:
    """Custom metrics of one facade (the global one by default)."""

    def __init__(self, facade: Metrics | None = None) -> None:
        self.facade = facade if facade is not None else get_metrics()
        self._by_name: dict[str, MetricHandle[Any]] = {}
        self._lock = threading.Lock()

    # -- declaration: raises on bad input ---------------------------------------------------

    def register_custom_metric(
        self,
        name: str,
        help: str,
        buckets: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
    ) -> Histogram:
        """Declare a histogram, the usual custom metric; returns its handle."""
        return self._remember(name, self.facade.histogram(name, help, labels, buckets))

    def register_counter(
        self, name: str, help: str, labels: Sequence[str] | None = None
    ) -> Counter:
        return self._remember(name, self.facade.counter(name, help, labels))

    def register_gauge(self, name: str, help: str, labels: Sequence[str] | None = None) -> Gauge:
        return self._remember(name, self.facade.gauge(name, help, labels))

    # -- recording by name: never raises outside strict mode ---------------------------------

    def record(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Observe ``value`` in histogram ``name``, declaring it on first use."""
        series = self._series(name, Histogram, "a histogram", labels)
        if series is not None:
            series.observe(value)

    def increment(
        self, name: str, amount: float = 1, labels: Mapping[str, str] | None = None
    ) -> None:
        """Add ``amount`` to counter ``name``, declaring it on first use."""
        series = self._series(name, Counter, "a counter", labels)
        if series is not None:
            series.inc(amount)

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Set gauge ``name``, declaring it on first use."""
        series = self._series(name, Gauge, "a gauge", labels)
        if series is not None:
            series.set(value)

    # -- internals ---------------------------------------------------------------------------

    def _series(
        self,
        name: str,
        kind: type[MetricHandle[Any]],
        wanted: str,
        labels: Mapping[str, str] | None,
    ) -> Any:
        """The handle or child to record to, or None once the problem is counted: a name
        that is not a string, labels that are not a mapping of names, a kind conflict."""
        try:
            handle = self._by_name.get(name) or self._on_first_use(name, kind, labels)
            if handle is None:
                return None
            if not isinstance(handle, kind):
                self._conflict(name, wanted, handle)
                return None
            return handle.labels(**labels) if labels else handle
        except RecordError:
            raise  # strict mode
        except Exception as exc:
            self.facade.reject_recording(
                CUSTOM, "invalid_recording", f"recording {name!r} failed: {exc!r}"
            )
            return None

    def _remember(self, name: str, handle: H) -> H:
        with self._lock:
            self._by_name[name] = handle
        return handle

    def _on_first_use(
        self, name: str, kind: type[MetricHandle[Any]], labels: Mapping[str, str] | None
    ) -> MetricHandle[Any] | None:
        facade = self.facade
        existing = facade.find(name)  # declared elsewhere (config, another registry, code)
        if existing is not None:
            return self._remember(name, existing)
        if not facade.has_series_budget():
            facade.reject_recording(CUSTOM, "cardinality_limit", f"new custom metric {name!r}")
            return None
        label_names = list(labels or ())
        help_text = f"Custom metric: {name}"
        try:
            if kind is Histogram:
                handle: MetricHandle[Any] = facade.histogram(name, help_text, label_names)
            elif kind is Counter:
                handle = facade.counter(name, help_text, label_names)
            else:
                handle = facade.gauge(name, help_text, label_names)
        except DeclarationError as exc:
            facade.reject_recording(CUSTOM, "invalid_declaration", str(exc))
            return None
        return self._remember(name, handle)

    def _conflict(self, name: str, wanted: str, handle: MetricHandle[Any]) -> None:
        self.facade.reject_recording(
            CUSTOM, "invalid_declaration", f"{name!r} is {handle.spec.describe()}, not {wanted}"
        )


_global: CustomMetrics | None = None


def _global_registry() -> CustomMetrics:
    global _global  # noqa: PLW0603 - one registry for the global facade, made on first use
    if _global is None:
        _global = CustomMetrics()
    return _global


def register_custom_metric(
    name: str,
    help: str,
    buckets: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
) -> Histogram:
    """Declare a custom histogram on the global facade."""
    return _global_registry().register_custom_metric(name, help, buckets, labels)


def record(name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
    """Observe into the global facade's custom histogram ``name``, declared on first use."""
    _global_registry().record(name, value, labels)
