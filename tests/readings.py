"""Reading back what a memory-backed facade recorded, by metric name and some labels."""

from __future__ import annotations

from typing import Any

import metricsfacade as mf


class MemoryReadings:
    """For test helpers that own a ``facade`` configured with the memory backend."""

    facade: mf.Metrics

    def _records(self, name: str, labels: dict[str, str]) -> list[Any]:
        records = self.facade.backend("memory").records(name)  # type: ignore[attr-defined]
        return [r for r in records if all(r.labels.get(k) == v for k, v in labels.items())]

    def count(self, name: str, **labels: str) -> float:
        """A counter summed over the series matching ``labels`` (or a gauge's value)."""
        return sum(record.value or 0.0 for record in self._records(name, labels))

    def observed(self, name: str, **labels: str) -> list[float]:
        """Every value observed by the histogram series matching ``labels``."""
        return [
            value
            for record in self._records(name, labels)
            if record.histogram is not None
            for value in record.histogram.values
        ]
