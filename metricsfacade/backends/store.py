"""Thread-safe in-process series storage, shared by the Prometheus and in-memory backends.

Each series is a small cell with its own lock: recording takes one uncontended lock, the
same cost prometheus-client pays, and readers (a scrape, a test assertion) copy values under
that lock so a histogram's +Inf bucket always equals its count.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

import attrs

from metricsfacade.backends.base import Backend, GaugeOps, RecordFn
from metricsfacade.spec import Kind, MetricSpec


class CounterCell:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float) -> None:
        with self._lock:
            self.value += amount

    def read(self) -> float:
        return self.value


class GaugeCell:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def set(self, value: float) -> None:
        with self._lock:  # so a set never lands in the middle of a concurrent add
            self.value = value

    def add(self, delta: float) -> None:
        with self._lock:
            self.value += delta

    def read(self) -> float:
        return self.value


@attrs.frozen
class HistogramReading:
    """A consistent copy of a histogram series. ``counts`` are per bucket, not cumulative;
    the last one is the +Inf bucket. ``values`` holds raw observations when kept."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    values: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with (inf, count)."""
        running = 0
        pairs = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class HistogramCell:
    __slots__ = ("_lock", "bounds", "counts", "sum", "values")

    def __init__(self, bounds: tuple[float, ...], keep_values: bool = False) -> None:
        self._lock = threading.Lock()
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.values: list[float] | None = [] if keep_values else None

    def observe(self, value: float) -> None:
        index = bisect_left(self.bounds, value)  # first bound >= value: Prometheus' `le`
        with self._lock:
            self.counts[index] += 1
            self.sum += value
            if self.values is not None:
                self.values.append(value)

    def read(self) -> HistogramReading:
        with self._lock:
            return HistogramReading(
                self.bounds, tuple(self.counts), self.sum, tuple(self.values or ())
            )


Cell = CounterCell | GaugeCell | HistogramCell


class StoredMetric:
    """A declared metric and its series, keyed by label values in declared order."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.series: dict[tuple[str, ...], Cell] = {}


class SeriesStore:
    """All metrics of one backend. Creation and snapshots lock; recording does not touch this."""

    def __init__(self, keep_values: bool = False) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, StoredMetric] = {}
        self._keep_values = keep_values

    def declare(self, spec: MetricSpec) -> None:
        with self._lock:
            stored = self._metrics.get(spec.key)
            if stored is None:
                self._metrics[spec.key] = StoredMetric(spec)
            else:
                stored.spec = spec  # re-declared by a re-configure: keep the series

    def cell(self, spec: MetricSpec, label_values: tuple[str, ...]) -> Cell:
        with self._lock:
            series = self._metrics[spec.key].series
            cell = series.get(label_values)
            if cell is None:
                cell = self._new_cell(spec)
                series[label_values] = cell
            return cell

    def _new_cell(self, spec: MetricSpec) -> Cell:
        if spec.kind is Kind.COUNTER:
            return CounterCell()
        if spec.kind is Kind.GAUGE:
            return GaugeCell()
        assert spec.buckets is not None, "the facade resolves buckets before declaring"
        return HistogramCell(spec.buckets, self._keep_values)

    def metrics(self) -> list[StoredMetric]:
        with self._lock:
            return list(self._metrics.values())

    def get(self, key: str) -> StoredMetric | None:
        return self._metrics.get(key)

    def snapshot(self, stored: StoredMetric) -> Iterator[tuple[tuple[str, ...], Cell]]:
        with self._lock:
            items = list(stored.series.items())
        yield from items


class StoreBackend(Backend):
    """A backend whose series live in a :class:`SeriesStore` in this process."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store

    def declare(self, spec: MetricSpec) -> None:
        self.store.declare(spec)

    def counter(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        cell = self.store.cell(spec, label_values)
        assert isinstance(cell, CounterCell)
        return cell.inc

    def gauge(self, spec: MetricSpec, label_values: tuple[str, ...]) -> GaugeOps:
        cell = self.store.cell(spec, label_values)
        assert isinstance(cell, GaugeCell)
        return GaugeOps(set=cell.set, add=cell.add)

    def histogram(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        cell = self.store.cell(spec, label_values)
        assert isinstance(cell, HistogramCell)
        return cell.observe
