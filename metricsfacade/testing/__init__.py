"""Test helpers: record into memory and assert on what was recorded.

    from metricsfacade.testing import MetricsMock

    def test_handler():
        with MetricsMock() as mock:          # or use the ``metrics_mock`` pytest fixture
            handle_request()
            mock.assert_counter("demo_requests_total", {"method": "ping"}, 1)

MetricsMock re-configures a facade (the global one unless given) with only the in-memory
backend, keeping its other settings, so code that declared its metrics at import time records
into it. It starts from empty series and, afterwards, restores the previous configuration
and the values recorded before it, so a test's recordings never leak into the application's.
Failures list everything that was recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from metricsfacade import get_metrics
from metricsfacade.backends.memory import MemoryBackend, Record
from metricsfacade.config import MetricsConfig
from metricsfacade.facade import Metrics
from metricsfacade.spec import Kind
from metricsfacade.store import SeriesStore

__all__ = ["MetricsMock", "Record"]


class MetricsMock:
    def __init__(self, facade: Metrics | None = None, *, strict: bool = False) -> None:
        self.facade = facade if facade is not None else get_metrics()
        self._strict = strict
        self._previous: MetricsConfig | None = None
        self._previous_store: SeriesStore | None = None

    def __enter__(self) -> MetricsMock:
        self._previous = self.facade.config
        # Keep the facade's own settings (buckets, limits...), swap only where values go.
        testing = attrs.evolve(
            self._previous or MetricsConfig(),
            enabled=True,
            backends=("memory",),
            port=None,
            strict=self._strict,
        )
        self._previous_store = self.facade.swap_store(SeriesStore())
        self.facade.configure(testing, environ={})
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._previous_store is not None
        self.facade.swap_store(self._previous_store)
        if self._previous is None:
            self.facade.close()
        else:
            self.facade.configure(self._previous, environ={})

    @property
    def backend(self) -> MemoryBackend:
        backend = self.facade.backend("memory")
        assert isinstance(backend, MemoryBackend)
        return backend

    def records(self, name: str | None = None) -> list[Record]:
        """What was recorded, without metricsfacade's own metrics unless asked by name."""
        return [
            record
            for record in self.backend.records(name)
            if name is not None or not record.name.startswith("metricsfacade_")
        ]

    def format_records(self) -> str:
        lines = [str(record) for record in self.backend.records()]
        return "\n".join(f"  {line}" for line in lines) or "  (nothing)"

    def dropped(self, metric: str | None = None, reason: str | None = None) -> float:
        """How many recordings were dropped, optionally for one metric and reason."""
        return sum(
            record.value or 0.0
            for record in self.backend.records("metricsfacade_dropped_total")
            if (metric is None or record.labels["metric"] == metric)
            and (reason is None or record.labels["reason"] == reason)
        )

    # -- assertions --------------------------------------------------------------------

    def assert_counter(
        self, name: str, labels: Mapping[str, str] | None = None, value: float = 1
    ) -> None:
        """The counter's value for these labels (None: summed over all series) equals value."""
        matched = self._matching(name, labels, (Kind.COUNTER,))
        total = sum(record.value or 0.0 for record in matched)
        self._check(
            math.isclose(total, value),
            f"counter {name}{_show(labels)} == {value:g}",
            f"it is {total:g}",
        )

    def assert_gauge(
        self, name: str, labels: Mapping[str, str] | None = None, value: float = 0
    ) -> None:
        """The gauge's value for these labels equals value."""
        matched = self._matching(name, labels, (Kind.GAUGE,))
        self._check(
            len(matched) == 1, f"one gauge series {name}{_show(labels)}", f"{len(matched)} match"
        )
        actual = matched[0].value or 0.0
        self._check(
            math.isclose(actual, value),
            f"gauge {name}{_show(labels)} == {value:g}",
            f"it is {actual:g}",
        )

    def assert_observed(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        count: int | None = None,
        sum: float | None = None,
        values: Sequence[float] | None = None,
    ) -> None:
        """Histogram or timer observations for these labels: how many, their sum, which ones
        (in any order). With no expectation given, at least one observation."""
        matched = self._matching(name, labels, (Kind.HISTOGRAM, Kind.TIMER))
        observed = sorted(v for r in matched if r.histogram for v in r.histogram.values)
        what = f"histogram {name}{_show(labels)}"
        if count is None and sum is None and values is None:
            self._check(bool(observed), f"{what} observed at least once", "it was never observed")
        if count is not None:
            self._check(
                len(observed) == count,
                f"{what} observed {count} times",
                f"observed {len(observed)} times",
            )
        if sum is not None:
            total = math.fsum(observed)
            self._check(math.isclose(total, sum), f"{what} sum == {sum:g}", f"it is {total:g}")
        if values is not None:
            self._check(
                observed == sorted(values),
                f"{what} observed {sorted(values)}",
                f"observed {observed}",
            )

    def assert_not_recorded(self, name: str) -> None:
        """No series of this metric has a non-zero value or any observation."""
        touched = [
            r for r in self.backend.records(name) if (r.histogram.count if r.histogram else r.value)
        ]
        self._check(
            not touched, f"nothing recorded for {name}", f"found {touched[0]}" if touched else ""
        )

    def _matching(
        self, name: str, labels: Mapping[str, str] | None, kinds: tuple[Kind, ...]
    ) -> list[Record]:
        records = self.backend.records(name)
        kind_names = " or ".join(kind.value for kind in kinds)
        self._check(bool(records), f"a {kind_names} named {name!r}", "there is none")
        self._check(
            records[0].kind in kinds,
            f"{name!r} to be a {kind_names}",
            f"it is a {records[0].kind.value}",
        )
        if labels is None:
            return records
        wanted = {key: str(value) for key, value in labels.items()}
        matched = [record for record in records if record.labels == wanted]
        self._check(bool(matched), f"a series {name}{_show(labels)}", "there is none")
        return matched

    def _check(self, ok: bool, expected: str, actual: str) -> None:
        if not ok:
            raise AssertionError(
                f"expected {expected}, but {actual}.\nRecorded:\n{self.format_records()}"
            )


def _show(labels: Mapping[str, Any] | None) -> str:
    if labels is None:
        return " (all series)"
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"
