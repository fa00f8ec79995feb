"""The binder: turns declared metrics and label sets into series of the store.

A child's record functions are pointed straight at its cell (``cell.inc``...), so recording
is one call whatever the number of backends: fan-out happens when backends read the store.
While no backend is configured they point at a no-op. The binder also keeps the cardinality
budget: past ``cardinality_limit`` series (over all worker processes, in the Prometheus backend's
multi-process mode), new label sets fold into one overflow series per metric.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from metricsfacade.drops import DropAccounting
from metricsfacade.handles import (
    Child,
    CounterChild,
    GaugeChild,
    HistogramChild,
    MetricHandle,
    RecordFn,
    record_nothing,
)
from metricsfacade.spec import DEFAULT_BUCKETS, text_safe
from metricsfacade.store import SeriesStore

logger = logging.getLogger("metricsfacade")

#: The label value every label takes in a metric's overflow series.
OVERFLOW_LABEL_VALUE = "__overflow__"
DEFAULT_CARDINALITY_LIMIT = 10_000


class SeriesBinder:
    """Binds handles and their children to a store (see the module's docstring)."""

    def __init__(self, lock: threading.RLock, drops: DropAccounting) -> None:
        self.lock = lock
        self._drops = drops
        #: where series live; the facade swaps it (MetricsMock), then binds again
        self.store = SeriesStore()
        self._recording = False
        self._default_buckets = DEFAULT_BUCKETS
        self._series_count = 0
        self.limit = DEFAULT_CARDINALITY_LIMIT

    def has_series_budget(self) -> bool:
        return self._series_count < self.limit

    def bind_all(
        self,
        handles: Iterable[MetricHandle[Any]],
        *,
        recording: bool,
        default_buckets: tuple[float, ...],
    ) -> None:
        """Point every series at the store, or at nothing when not ``recording``; histograms
        declared without buckets take ``default_buckets``. Later declarations follow suit."""
        self._recording = recording
        self._default_buckets = default_buckets
        for handle in handles:
            self.bind(handle)

    def bind(self, handle: MetricHandle[Any]) -> None:
        spec = handle.spec
        if spec.kind.has_buckets and spec.buckets is None:
            spec = attrs.evolve(spec, buckets=self._default_buckets)
        handle.bound_spec = spec
        if self._recording:
            self.store.declare(spec)
        for child in handle.series.values():
            self._wire(handle, child)
        if handle._overflow is not None:
            self._wire(handle, handle._overflow, self._drops.overflow_counter(handle))

    def bind_new(self, handle: MetricHandle[Any]) -> None:
        """A handle just declared: bound, with what its own methods record to."""
        if handle.spec.label_names:
            handle._unlabeled = self._missing_labels_child(handle)
        self.bind(handle)
        if not handle.spec.label_names:
            handle._unlabeled = self.child_for(handle, (), {})

    def _wire(self, handle: MetricHandle[Any], child: Child, extra: RecordFn | None = None) -> None:
        """Point a child's record functions at its cell, or at nothing while not recording."""
        if not self._recording:
            for attribute in _record_attributes(type(child)):
                setattr(child, attribute, record_nothing)
            return
        cell: Any = self.store.cell(handle.spec.key, child.label_values)
        if isinstance(child, CounterChild):
            child._inc = _also(cell.inc, extra)
        elif isinstance(child, GaugeChild):
            child._set = _also(cell.set, extra)
            child._add = _also(cell.add, extra)
        elif isinstance(child, HistogramChild):
            child._observe = _also(cell.observe, extra)

    # -- the slow path of labels() ---------------------------------------------------------

    def child_for(
        self, handle: MetricHandle[Any], values: tuple[object, ...], by_name: Mapping[str, object]
    ) -> Any:
        """Validate a label set not in the cache, then create, fold or reject its series."""
        names = handle.spec.label_names
        if by_name:
            if values:
                return self._bad_labels(
                    handle, "invalid_labels", "labels given both by position and by name"
                )
            unknown = sorted(set(by_name) - set(names))
            if unknown:
                return self._bad_labels(
                    handle, "unknown_label", f"unknown label {unknown[0]!r}; declared {list(names)}"
                )
            missing = [name for name in names if name not in by_name]
            if missing:
                return self._bad_labels(
                    handle, "missing_label", f"missing label {missing[0]!r}; declared {list(names)}"
                )
            values = tuple(by_name[name] for name in names)
        if len(values) != len(names):
            reason = "missing_label" if len(values) < len(names) else "unknown_label"
            return self._bad_labels(
                handle, reason, f"{len(values)} label values for labels {list(names)}"
            )
        try:
            hash(values)
            normalized = tuple(text_safe(v if type(v) is str else str(v)) for v in values)
        except Exception as exc:  # unhashable, or a __hash__ or __str__ that raises
            return self._bad_labels(
                handle, "invalid_label_value", f"a label value is unusable: {exc!r}"
            )
        child = handle.series.get(normalized)  # a dict read: no lock needed
        if child is None:
            with self.lock:
                child = handle.series.get(normalized)
                if child is None:
                    if not handle.spec.internal and not self._admits(handle, normalized):
                        return self._overflow_child(handle)
                    child = handle.child_type(handle, normalized)
                    self._wire(handle, child)
                    handle.series[normalized] = child
                    if not handle.spec.internal:
                        self._series_count += 1
        if all(type(value) is str for value in values):
            # Only str keys in the cache: 1, True and 1.0 are equal keys but three series.
            handle._children[values] = child
        return child

    def _admits(self, handle: MetricHandle[Any], label_values: tuple[str, ...]) -> bool:
        """Whether a new series fits: counted over every worker process when they share a
        multi-process directory, else in this facade."""
        shared = self.store.admits_across_processes(handle.spec, label_values, self.limit)
        return self._series_count < self.limit if shared is None else shared

    def _overflow_child(self, handle: MetricHandle[Any]) -> Any:
        """The one series per metric that new label sets fold into past the limit. Never cached
        under the caller's key, so memory stays bounded however many label values arrive."""
        if handle._overflow is None:
            child = handle.child_type(
                handle, (OVERFLOW_LABEL_VALUE,) * len(handle.spec.label_names)
            )
            self._wire(handle, child, self._drops.overflow_counter(handle))
            handle._overflow = child
            logger.warning(
                "metricsfacade: the cardinality limit of %d series is reached; new label sets "
                "of %r are folded into its %s series (counted in "
                "metricsfacade_cardinality_overflow_total)",
                self.limit,
                handle.spec.name,
                OVERFLOW_LABEL_VALUE,
            )
        return handle._overflow

    def _missing_labels_child(self, handle: MetricHandle[Any]) -> Any:
        """What ``metric.inc()`` records to on a labeled metric: a rejection per call."""
        child = handle.child_type(handle, ())
        detail = f"recorded without labels; declared {list(handle.spec.label_names)}"

        def reject(_value: float) -> None:
            self._drops.reject(handle, "missing_label", detail)

        for attribute in _record_attributes(type(child)):
            setattr(child, attribute, reject)
        return child

    def _bad_labels(self, handle: MetricHandle[Any], reason: str, detail: str) -> Any:
        self._drops.reject(handle, reason, detail)
        return handle.child_type(handle, ())  # records nowhere: its functions are no-ops


def _record_attributes(child_type: type[Child]) -> tuple[str, ...]:
    """The attributes of a child that the binder points at a cell."""
    if issubclass(child_type, CounterChild):
        return ("_inc",)
    if issubclass(child_type, GaugeChild):
        return ("_set", "_add")
    return ("_observe",)


def _also(record: RecordFn, extra: RecordFn | None) -> RecordFn:
    """``record``, then ``extra`` (the overflow series also counts each folded recording)."""
    if extra is None:
        return record

    def both(value: float) -> None:
        record(value)
        extra(value)

    return both
