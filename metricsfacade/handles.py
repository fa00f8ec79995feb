"""The handles users hold: metrics (``Counter``...) and their bound children (one per series).

The record path lives here and is kept short: a bound child validates the value with one
chained comparison and calls the function(s) its backends gave it for that series. Anything
unusual (a bad value, a store error, a label set not seen before) leaves the fast path: a
new label set goes to the handle's :class:`SeriesSource`, a recording it cannot take to its
:class:`RecordErrors`, which counts and logs it (or raises, in strict mode).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from operator import itemgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from metricsfacade.spec import MetricSpec
from metricsfacade.timing import Timing

_INF = math.inf
#: the longest duration a timer takes: push backends send it in milliseconds, which must
#: stay finite
_MAX_SECONDS = sys.float_info.max / 1000.0
RecordFn = Callable[[float], None]


class RecordErrors(Protocol):
    """Where handles report a recording they cannot take. Counted in
    ``metricsfacade_dropped_total`` and logged once, or raised as RecordError when strict."""

    def reject(self, handle: MetricHandle[Any], reason: str, detail: str) -> None:
        """A bad call: a value that is not finite, labels that do not match."""

    def record_failed(self, handle: MetricHandle[Any], exc: Exception, value: object) -> None:
        """Recording ``value`` raised ``exc`` (a non-number, a value out of range)."""


class SeriesSource(Protocol):
    """Where a handle gets the child of a label set it has not cached."""

    def child_for(
        self, handle: MetricHandle[Any], values: tuple[object, ...], by_name: dict[str, object]
    ) -> Any:
        """Validate the label set; create, fold (past the cardinality limit) or reject it."""


def record_nothing(_value: float) -> None:
    """What a child records to while no backend is bound (unconfigured, disabled, closed)."""


class Child:
    """One series: a metric with all its label values fixed. Keep it for the fastest path.

    The facade points a child's record functions at its series' cell while configured, and at
    a no-op otherwise. The methods themselves never change, so a bound method or a timer kept
    from before ``configure()`` records to whatever is bound when it is called.
    """

    __slots__ = ("_metric", "label_values")

    def __init__(self, metric: MetricHandle[Any], label_values: tuple[str, ...]) -> None:
        self._metric = metric
        self.label_values = label_values

    @property
    def labels_dict(self) -> dict[str, str]:
        return dict(zip(self._metric.spec.label_names, self.label_values, strict=True))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._metric.spec.name}{self.labels_dict}>"


class CounterChild(Child):
    __slots__ = ("_inc",)

    def __init__(self, metric: MetricHandle[CounterChild], label_values: tuple[str, ...]) -> None:
        super().__init__(metric, label_values)
        self._inc: RecordFn = record_nothing

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (finite, >= 0). Invalid amounts are counted and dropped."""
        try:
            if 0 <= amount < _INF:
                self._inc(amount)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, amount)
            return
        reason = "negative_value" if amount < 0 else "not_finite"
        self._metric._errors.reject(self._metric, reason, f"inc({amount!r})")


class GaugeChild(Child):
    __slots__ = ("_add", "_set")

    def __init__(self, metric: MetricHandle[GaugeChild], label_values: tuple[str, ...]) -> None:
        super().__init__(metric, label_values)
        self._set: RecordFn = record_nothing
        self._add: RecordFn = record_nothing

    def set(self, value: float) -> None:
        try:
            if -_INF < value < _INF:
                self._set(value)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, value)
            return
        self._metric._errors.reject(self._metric, "not_finite", f"set({value!r})")

    def inc(self, amount: float = 1) -> None:
        try:
            if -_INF < amount < _INF:
                self._add(amount)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, amount)
            return
        self._metric._errors.reject(self._metric, "not_finite", f"inc({amount!r})")

    def dec(self, amount: float = 1) -> None:
        try:
            if -_INF < amount < _INF:
                self._add(-amount)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, amount)
            return
        self._metric._errors.reject(self._metric, "not_finite", f"dec({amount!r})")


class HistogramChild(Child):
    __slots__ = ("_observe",)

    def __init__(self, metric: MetricHandle[HistogramChild], label_values: tuple[str, ...]) -> None:
        super().__init__(metric, label_values)
        self._observe: RecordFn = record_nothing

    def observe(self, value: float) -> None:
        """Record one observation (seconds, for timers). Non-finite values are dropped."""
        try:
            if -_INF < value < _INF:
                self._observe(value)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, value)
            return
        self._metric._errors.reject(self._metric, "not_finite", f"observe({value!r})")

    def time(self) -> Timing:
        """Time a block (``with``/``async with``) or every call of a decorated function."""
        return Timing(self.observe)


class TimerChild(HistogramChild):
    __slots__ = ()

    def observe(self, value: float) -> None:
        """Record one duration in seconds. Non-finite or absurdly long ones are dropped."""
        try:
            if -_MAX_SECONDS <= value <= _MAX_SECONDS:
                self._observe(value)
                return
        except Exception as exc:
            self._metric._errors.record_failed(self._metric, exc, value)
            return
        reason = "out_of_range" if -_INF < value < _INF else "not_finite"
        self._metric._errors.reject(self._metric, reason, f"observe({value!r})")


ChildT = TypeVar("ChildT", bound=Child)


def _keyword_key(names: tuple[str, ...]) -> Callable[[dict[str, object]], tuple[object, ...]]:
    """Turns keyword labels into the positional key, in C for two or more labels."""
    if len(names) < 2:  # itemgetter returns a bare value for one name, and needs at least one
        return lambda by_name: tuple(by_name[name] for name in names)
    return itemgetter(*names)


class MetricHandle(Generic[ChildT]):
    """A declared metric. ``labels(...)`` returns the cached child for a label set."""

    child_type: ClassVar[type[Child]]

    __slots__ = (
        "_children",
        "_errors",
        "_keyword_key",
        "_label_count",
        "_overflow",
        "_series_source",
        "_unlabeled",
        "bound_spec",
        "series",
        "spec",
    )

    def __init__(self, spec: MetricSpec, series: SeriesSource, errors: RecordErrors) -> None:
        self.spec = spec
        #: ``spec`` with the configured default buckets filled in, once bound.
        self.bound_spec = spec
        self._series_source = series
        self._errors = errors
        self._label_count = len(spec.label_names)
        self._keyword_key = _keyword_key(spec.label_names)
        #: label values as callers pass them, when all are str -> child. Read without a lock.
        self._children: dict[tuple[object, ...], ChildT] = {}
        #: normalized label values (strings) -> child: the real series.
        self.series: dict[tuple[str, ...], ChildT] = {}
        #: the series that label sets fold into past the cardinality limit.
        self._overflow: ChildT | None = None
        #: what calls on the metric itself record to (set by the facade).
        self._unlabeled: ChildT

    def labels(self, /, *values: object, **by_name: object) -> ChildT:
        """The child for these label values, by position (declared order) or by name.

        ``self`` is positional-only, so a label may be called ``self`` too. Values are keyed
        by their ``str()``: ``1``, ``"1"`` are one series, ``True`` and ``1.0`` others.
        """
        if by_name:
            if values or len(by_name) != self._label_count:
                return cast(ChildT, self._series_source.child_for(self, values, by_name))
            try:
                values = self._keyword_key(by_name)
            except KeyError:
                return cast(ChildT, self._series_source.child_for(self, (), by_name))
        try:
            child = self._children.get(values)  # only all-str label sets are cached here
        except Exception:  # an unhashable label value, or one whose __hash__ raises
            child = None
        if child is None:
            return cast(ChildT, self._series_source.child_for(self, values, {}))
        return child

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.describe()}>"


class Counter(MetricHandle[CounterChild]):
    child_type = CounterChild
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self._unlabeled.inc(amount)


class Gauge(MetricHandle[GaugeChild]):
    child_type = GaugeChild
    __slots__ = ()

    def set(self, value: float) -> None:
        self._unlabeled.set(value)

    def inc(self, amount: float = 1) -> None:
        self._unlabeled.inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._unlabeled.dec(amount)


class Histogram(MetricHandle[HistogramChild]):
    child_type = HistogramChild
    __slots__ = ()

    def observe(self, value: float) -> None:
        self._unlabeled.observe(value)

    def time(self) -> Timing:
        return self._unlabeled.time()


class Timer(Histogram):
    """A histogram of seconds. Push backends send it as a timing in milliseconds."""

    child_type = TimerChild
    __slots__ = ()
