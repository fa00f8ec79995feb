"""The backend interface: metrics are declared once, then each series gets cheap record calls.

A backend never sees handles or label names in record calls. The facade asks it once per series
for the functions that record to that series (in the spirit of Rust's ``metrics`` crate) and
then calls them directly. Record functions receive values the facade already validated: finite
numbers, non-negative for counters. They should not raise; if they do, the facade counts the
failure and carries on.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import attrs

from metricsfacade.config import MetricsConfig
from metricsfacade.spec import MetricSpec

RecordFn = Callable[[float], None]
#: (reason, number of lines) -> None: how a push backend reports what it could not deliver.
ReportDrop = Callable[[str, int], None]


class ValueOutOfRange(ValueError):
    """A finite value the backend cannot represent (a duration overflowing in milliseconds).
    The facade counts it as ``out_of_range`` instead of a backend error."""


@attrs.frozen
class GaugeOps:
    """The two ways to change a gauge: set an absolute value, or add a (signed) delta."""

    set: RecordFn
    add: RecordFn


class Backend(abc.ABC):
    """A metrics sink. Subclasses set ``name`` and implement the series factories."""

    name: ClassVar[str]
    #: the reasons it passes to the drop reporter (the facade binds their series up front)
    drop_reasons: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: MetricsConfig) -> Backend:
        """Build the backend from the whole configuration (it reads its own table)."""

    def declare(self, spec: MetricSpec) -> None:  # noqa: B027 - optional hook
        """Called once per metric before any of its series; ``spec.buckets`` is resolved."""

    @abc.abstractmethod
    def counter(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        """Return the function that adds a non-negative amount to this counter series."""

    @abc.abstractmethod
    def gauge(self, spec: MetricSpec, label_values: tuple[str, ...]) -> GaugeOps:
        """Return the functions that set and add to this gauge series."""

    @abc.abstractmethod
    def histogram(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        """Return the function that observes a value (seconds, for timers) in this series."""

    def set_drop_reporter(self, report_drop: ReportDrop) -> None:  # noqa: B027 - optional hook
        """The facade passes a function counting undeliverable lines; push backends call it
        (never while holding a lock of theirs: it records a metric, possibly to them)."""

    def set_collect_hook(self, hook: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Pull backends call ``hook`` before each collection so pulled values are fresh."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Send anything buffered. Push backends override this."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release sockets and threads. Called once by the facade."""
