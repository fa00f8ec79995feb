"""Cells that also write their values to this process's file in a multi-process directory.

Sharing swaps a cell's class for its shared subclass (and back), so the cell stays the
object that handles and backends hold: a recording racing with the swap is not lost, the
next write carries it. Each write is one assignment to a double of the file's mapping, an
aligned 8-byte store that a reader in another process never sees half done.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left

from metricsfacade.store import (
    Cell,
    CounterCell,
    GaugeCell,
    HistogramCell,
    NegativeObservation,
)


class SharedCounterCell(CounterCell):
    """A counter whose value is also written to a multi-process file (``SeriesStore.share``)."""

    __slots__ = ()

    def inc(self, amount: float) -> None:
        with self._lock:
            value = self.value + amount
            if value == math.inf:
                raise OverflowError(f"counter {self.value!r} + {amount!r} overflows")
            self.value = value
            self.pending += amount
            self._page[self._at] = value

    def publish(self) -> None:
        with self._lock:
            self._page[self._at] = self.value


class SharedGaugeCell(GaugeCell):
    """A gauge whose value is also written to a multi-process file."""

    __slots__ = ()

    def set(self, value: float) -> None:
        value += 0.0
        with self._lock:
            self.value = value
            self.dirty = True
            self._write(value)

    def add(self, delta: float) -> None:
        with self._lock:
            value = self.value + delta
            if not -math.inf < value < math.inf:
                raise OverflowError(f"gauge {self.value!r} + {delta!r} overflows")
            self.value = value
            self.dirty = True
            self._write(value)

    def publish(self) -> None:
        with self._lock:
            self._write(self.value)

    def _write(self, value: float) -> None:
        self._page[self._at] = value


class SharedLatestGaugeCell(SharedGaugeCell):
    """A ``multiprocess_mode="latest"`` gauge: the time of each write goes beside its
    value, so a scrape serves the one written last. Other gauges skip the clock."""

    __slots__ = ()

    def _write(self, value: float) -> None:
        page, at = self._page, self._at
        page[at] = value
        page[at + 1] = time.time()


class SharedHistogramCell(HistogramCell):
    """A histogram whose sum and bucket counts are also written to a multi-process file.
    Readers add the bucket counts up for the count, so +Inf always equals the count."""

    __slots__ = ()

    def observe(self, observed: float) -> None:
        value = observed + 0.0
        if value < self._floor:
            raise NegativeObservation(f"{observed!r} < 0, and the lowest bucket is >= 0")
        index = bisect_left(self.bounds, value)
        with self._lock:
            count = self.counts[index] = self.counts[index] + 1
            self.sum += value
            page = self._page
            page[self._at] = self.sum
            page[self._at + 1 + index] = count
            if self._limit:
                self._sample(value)
            if self.values is not None:
                self.values.append(observed)

    def publish(self) -> None:
        with self._lock:
            page, at = self._page, self._at
            page[at] = self.sum
            for index, count in enumerate(self.counts, start=at + 1):
                page[index] = count


_SHARED: dict[type[Cell], type[Cell]] = {
    CounterCell: SharedCounterCell,
    GaugeCell: SharedGaugeCell,
    HistogramCell: SharedHistogramCell,
}
_UNSHARED = {shared: plain for plain, shared in _SHARED.items()}
_UNSHARED[SharedLatestGaugeCell] = GaugeCell


def share(cell: Cell, page: memoryview[float], at: int, *, stamped: bool = False) -> None:
    """Write the cell's values at ``page[at:]``, and there on every record from now on;
    ``stamped``: a gauge also writes the time (``multiprocess_mode="latest"``)."""
    cell._page, cell._at = page, at
    plain = _UNSHARED.get(type(cell), type(cell))
    cell.__class__ = SharedLatestGaugeCell if stamped else _SHARED.get(plain, plain)
    assert isinstance(cell, (SharedCounterCell, SharedGaugeCell, SharedHistogramCell))
    cell.publish()


def unshare(cell: Cell) -> None:
    cell.__class__ = _UNSHARED.get(type(cell), type(cell))
