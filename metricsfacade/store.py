"""The series store: one cell per series, updated by recording, read by every backend.

A recording changes exactly one cell, whatever the number of backends. Pull backends
(Prometheus) read the cells when scraped; push backends (StatsD, Datadog) take what changed
since their previous flush (:meth:`SeriesStore.take_changes`). The facade owns the store, so
values survive a re-configure and a counter never goes backwards.

Each cell has its own lock: recording takes one uncontended lock, the same cost
prometheus-client pays, and readers copy values under it, so a histogram's +Inf bucket always
equals its count. After ``os.fork()`` every lock is made anew in the child (a parent thread
may have held one) and what the parent had not pushed yet is left to the parent, so nothing
is sent twice.
"""

from __future__ import annotations

import math
import random
import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

import attrs

from metricsfacade import forking
from metricsfacade.spec import Kind, MetricSpec

_INF = math.inf


class CounterCell:
    __slots__ = ("_at", "_lock", "_page", "pending", "value")

    #: a shared cell's multi-process file, as doubles, and the index of its first value
    _page: memoryview[float]
    _at: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0
        #: the increase not yet sent by the push backends, summed on its own so that it
        #: stays exact however large ``value`` grows
        self.pending = 0.0

    def inc(self, amount: float) -> None:
        with self._lock:
            value = self.value + amount
            if value == _INF:
                raise OverflowError(f"counter {self.value!r} + {amount!r} overflows")
            self.value = value
            self.pending += amount

    def read(self) -> float:
        return self.value

    def take_increase(self) -> float:
        """The increase since the previous call (read by the push flusher only)."""
        with self._lock:
            increase, self.pending = self.pending, 0.0
        return increase

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0.0

    def clear(self) -> None:
        self.value = 0.0


class GaugeCell:
    __slots__ = ("_at", "_lock", "_page", "dirty", "value")

    #: a shared cell's multi-process file, as doubles, and the index of its first value
    _page: memoryview[float]
    _at: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0
        #: written since the push backends last sent it
        self.dirty = False

    def set(self, value: float) -> None:
        value += 0.0  # a float, like every other cell value (an overflowing int raises here)
        with self._lock:  # so a set never lands in the middle of a concurrent add
            self.value = value
            self.dirty = True

    def add(self, delta: float) -> None:
        with self._lock:
            value = self.value + delta
            if not -_INF < value < _INF:
                raise OverflowError(f"gauge {self.value!r} + {delta!r} overflows")
            self.value = value
            self.dirty = True

    def read(self) -> float:
        return self.value

    def take_change(self) -> float | None:
        """The value if it was written since the previous call, else None. Like DogStatsd's
        own aggregation: a gauge recorded during a flush interval is sent, even unchanged."""
        with self._lock:
            if not self.dirty:
                return None
            self.dirty = False
            return self.value

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.dirty = False

    def clear(self) -> None:
        self.value = 0.0


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


@attrs.frozen
class Samples:
    """Observations taken for the push backends: all of them when ``seen`` is at most the
    sample limit, else a uniform sample of ``seen`` (each standing for ``seen/len`` of them)."""

    values: list[float]
    seen: int

    @property
    def rate(self) -> float:
        return len(self.values) / self.seen if self.seen else 1.0


class NegativeObservation(ValueError):
    """A negative value for a histogram whose buckets are all >= 0 (such a histogram's sum
    must never go negative: OpenMetrics readers refuse the whole scrape)."""


class HistogramCell:
    __slots__ = (
        "_at",
        "_floor",
        "_limit",
        "_lock",
        "_next_replaced",
        "_page",
        "_samples",
        "_seen",
        "_weight",
        "bounds",
        "counts",
        "sum",
        "values",
    )

    #: a shared cell's multi-process file, as doubles, and the index of its first value
    _page: memoryview[float]
    _at: int

    def __init__(self, bounds: tuple[float, ...], keep_values: bool, sample_limit: int) -> None:
        self._lock = threading.Lock()
        self.bounds = bounds
        self._floor = 0.0 if bounds[0] >= 0 else -_INF
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        #: every observation, for the memory backend's assertions
        self.values: list[float] | None = [] if keep_values else None
        #: observations since the previous push flush: a reservoir of ``_limit`` (0: none)
        self._limit = sample_limit
        self._start_reservoir()

    def _start_reservoir(self) -> None:
        self._samples: list[float] = []
        self._seen = 0
        self._weight = 1.0
        self._next_replaced = 0  # set by _skip() once the reservoir is full

    def _skip(self) -> None:
        """Reservoir sampling with geometric jumps (Li's algorithm L): a uniform sample of
        everything observed, for the price of one comparison per observation that is not
        kept, instead of one random number each."""
        self._weight *= math.exp(math.log(_unit_random()) / self._limit)
        jump = math.log(_unit_random()) / math.log1p(-self._weight) if self._weight < 1 else 0
        self._next_replaced = self._seen + int(jump) + 1

    def observe(self, observed: float) -> None:
        value = observed + 0.0  # a float (an int too large for one raises, before any change)
        if value < self._floor:
            raise NegativeObservation(f"{observed!r} < 0, and the lowest bucket is >= 0")
        index = bisect_left(self.bounds, value)  # first bound >= value: Prometheus' `le`
        with self._lock:
            self.counts[index] += 1
            self.sum += value
            if self._limit:
                self._sample(value)
            if self.values is not None:
                self.values.append(observed)  # as recorded: assertions show 3, not 3.0

    def _sample(self, value: float) -> None:
        """Keep ``value`` in the reservoir of the push flush (the lock is held)."""
        self._seen += 1
        if self._seen <= self._limit:
            self._samples.append(value)
            if self._seen == self._limit:
                self._skip()
        elif self._seen == self._next_replaced:
            self._samples[random.randrange(self._limit)] = value
            self._skip()

    def read(self) -> HistogramReading:
        with self._lock:
            return HistogramReading(
                self.bounds, tuple(self.counts), self.sum, tuple(self.values or ())
            )

    def take_samples(self) -> Samples | None:
        """The observations since the previous call, or None when there were none."""
        with self._lock:
            if not self._seen:
                return None
            samples = Samples(self._samples, self._seen)
            self._start_reservoir()
            return samples

    def configure(self, keep_values: bool, sample_limit: int) -> None:
        with self._lock:
            if keep_values and self.values is None:
                self.values = []
            elif not keep_values:
                self.values = None
            if sample_limit != self._limit:
                self._limit = sample_limit
                self._start_reservoir()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._start_reservoir()

    def clear(self) -> None:
        self.counts = [0] * len(self.counts)
        self.sum = 0.0
        if self.values is not None:
            self.values = []


Cell = CounterCell | GaugeCell | HistogramCell


class Pages(Protocol):
    """Where a shared store writes its values as well: this process's file in a
    multi-process directory (``metricsfacade.multiprocess``)."""

    def share(self, cell: Cell, spec: MetricSpec, label_values: tuple[str, ...]) -> None:
        """Write the cell's values to its series' place, and there on every record."""

    def unshare(self, cell: Cell) -> None:
        """Record into the cell only, from now on."""

    def for_this_process(self) -> Pages:
        """The pages of this process (a forked child writes a file of its own)."""

    def admits(self, spec: MetricSpec, label_values: tuple[str, ...], limit: int) -> bool:
        """Whether a new series fits in the cardinality budget shared by every process."""


def _unit_random() -> float:
    """A random number in (0, 1): never 0, whose log is -inf."""
    return random.random() or 1e-300


#: one series that changed: its metric (buckets resolved), its label values, and the change
Change = tuple[MetricSpec, tuple[str, ...], float]


@attrs.frozen
class Changes:
    """What the push backends send at one flush: counter increases, the values of gauges
    written, and the histogram observations taken since the previous flush."""

    counters: list[Change]
    gauges: list[Change]
    histograms: list[tuple[MetricSpec, tuple[str, ...], Samples]]

    def __bool__(self) -> bool:
        return bool(self.counters or self.gauges or self.histograms)


class StoredMetric:
    """A declared metric (its spec with buckets resolved) and its series by label values."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.series: dict[tuple[str, ...], Cell] = {}


class SeriesStore:
    """Every series of one facade. Creating series and listing them lock the store;
    recording touches only a cell."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, StoredMetric] = {}
        self._keep_values = False
        self._sample_limit = 0
        #: a multi-process file every value is written to as well, and who asked for it
        self._pages: Pages | None = None
        self._pages_owner: object = None
        forking.LOCKS.add(self)

    def configure(self, *, keep_values: bool, sample_limit: int) -> None:
        """Keep every observation (memory backend) and/or a sample per push flush."""
        with self._lock:
            self._keep_values, self._sample_limit = keep_values, sample_limit
            cells = [cell for stored in self._metrics.values() for cell in stored.series.values()]
        for cell in cells:
            if isinstance(cell, HistogramCell):
                cell.configure(keep_values, sample_limit)

    def share(self, pages: Pages, owner: object) -> None:
        """Write every series' values to ``pages`` too, as they are recorded: the
        Prometheus backend's multi-process mode, where other processes read them."""
        with self._lock:
            self._pages, self._pages_owner = pages, owner
            for stored in self._metrics.values():
                for label_values, cell in stored.series.items():
                    pages.share(cell, stored.spec, label_values)

    def admits_across_processes(
        self, spec: MetricSpec, label_values: tuple[str, ...], limit: int
    ) -> bool | None:
        """Whether a new series fits in the budget all processes share, or None when the
        store is not shared (each process keeps its own count)."""
        pages = self._pages
        return None if pages is None else pages.admits(spec, label_values, limit)

    def unshare(self, owner: object) -> None:
        """Stop writing to the pages ``owner`` shared (unless another owner took over)."""
        with self._lock:
            pages = self._pages
            if pages is None or self._pages_owner is not owner:
                return
            self._pages, self._pages_owner = None, None
            for stored in self._metrics.values():
                for cell in stored.series.values():
                    pages.unshare(cell)

    def declare(self, spec: MetricSpec) -> None:
        """Add a metric, or update its spec. Histogram series whose buckets change start
        again: their counts cannot be re-bucketed."""
        with self._lock:
            stored = self._metrics.get(spec.key)
            if stored is None:
                self._metrics[spec.key] = StoredMetric(spec)
                return
            if stored.spec.buckets != spec.buckets:
                stored.series.clear()
            stored.spec = spec

    def cell(self, key: str, label_values: tuple[str, ...]) -> Cell:
        """The cell of one series, created on first use."""
        with self._lock:
            stored = self._metrics[key]
            cell = stored.series.get(label_values)
            if cell is None:
                cell = self._new_cell(stored.spec)
                if self._pages is not None:
                    self._pages.share(cell, stored.spec, label_values)
                stored.series[label_values] = cell
            return cell

    def _new_cell(self, spec: MetricSpec) -> Cell:
        if spec.kind is Kind.COUNTER:
            return CounterCell()
        if spec.kind is Kind.GAUGE:
            return GaugeCell()
        assert spec.buckets is not None, "the facade resolves buckets before declaring"
        return HistogramCell(spec.buckets, self._keep_values, self._sample_limit)

    def metrics(self) -> list[StoredMetric]:
        with self._lock:
            return list(self._metrics.values())

    def series(self, stored: StoredMetric) -> list[tuple[tuple[str, ...], Cell]]:
        with self._lock:
            return list(stored.series.items())

    def cells(self) -> Iterator[tuple[MetricSpec, tuple[str, ...], Cell]]:
        """Every series, metric by metric (a copy: recording may go on meanwhile)."""
        for stored in self.metrics():
            for label_values, cell in self.series(stored):
                yield stored.spec, label_values, cell

    def take_changes(self) -> Changes:
        """Everything that changed since the previous call (one caller at a time)."""
        changes = Changes([], [], [])
        for spec, label_values, cell in self.cells():
            if isinstance(cell, CounterCell):
                increase = cell.take_increase()
                if increase:
                    changes.counters.append((spec, label_values, increase))
            elif isinstance(cell, GaugeCell):
                value = cell.take_change()
                if value is not None:
                    changes.gauges.append((spec, label_values, value))
            else:
                samples = cell.take_samples()
                if samples is not None:
                    changes.histograms.append((spec, label_values, samples))
        return changes

    def start_push_baseline(self) -> None:
        """Mark every value as sent: a push backend starting now sends only what comes
        after, except gauges, sent once so the agent learns their current value."""
        for _spec, _values, cell in self.cells():
            if isinstance(cell, CounterCell):
                cell.take_increase()
            elif isinstance(cell, GaugeCell):
                cell.dirty = True
            else:
                cell.take_samples()

    def _after_fork_in_child(self) -> None:
        """New locks. A shared store starts a file of its own from zero: what the parent
        recorded stays in the parent's file, and counting it here would count it twice."""
        self._lock = threading.Lock()
        pages = self._pages.for_this_process() if self._pages is not None else None
        self._pages = pages
        for stored in self._metrics.values():
            for label_values, cell in stored.series.items():
                cell._after_fork()
                if pages is not None:
                    cell.clear()
                    pages.share(cell, stored.spec, label_values)
