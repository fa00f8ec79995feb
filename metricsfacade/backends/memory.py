"""In-memory backend: every value (and every observation) for tests to read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from metricsfacade.backends.base import Backend
from metricsfacade.spec import Kind
from metricsfacade.store import CounterCell, GaugeCell, HistogramCell, HistogramReading


@attrs.frozen
class Record:
    """One series as the memory backend holds it."""

    name: str
    kind: Kind
    labels: dict[str, str]
    #: counter or gauge value; None for histograms and timers
    value: float | None = None
    histogram: HistogramReading | None = None

    def __str__(self) -> str:
        labels = ",".join(f'{key}="{value}"' for key, value in self.labels.items())
        series = f"{self.kind.value} {self.name}{{{labels}}}"
        if self.histogram is not None:
            reading = self.histogram
            return (
                f"{series} count={reading.count} sum={reading.sum:g} values={list(reading.values)}"
            )
        return f"{series} = {self.value:g}"


class MemoryBackend(Backend):
    """Reads the facade's store, which keeps every histogram observation while this backend
    is configured."""

    name = "memory"
    keeps_values = True

    @classmethod
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> MemoryBackend:
        return cls()

    def describe(self) -> str:
        return "in-process"

    def records(self, name: str | None = None) -> list[Record]:
        """Every series (of metric ``name``, if given), in declaration and creation order."""
        records = []
        for stored in self.store.metrics():
            spec = stored.spec
            if name is not None and name not in (spec.name, spec.key):
                continue
            for label_values, cell in self.store.series(stored):
                labels = dict(zip(spec.label_names, label_values, strict=True))
                if isinstance(cell, (CounterCell, GaugeCell)):
                    records.append(Record(spec.name, spec.kind, labels, value=cell.read()))
                elif isinstance(cell, HistogramCell):
                    records.append(Record(spec.name, spec.kind, labels, histogram=cell.read()))
        return records

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A counter's or gauge's value for exactly these labels (none: the unlabeled series)."""
        wanted = dict(labels or {})
        for record in self.records(name):
            if record.labels == wanted and record.value is not None:
                return record.value
        raise KeyError(f"no counter or gauge series {name}{wanted}")
