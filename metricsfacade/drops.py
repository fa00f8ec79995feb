"""Drop accounting: what recording could not take is counted, logged once, never raised.

Every handle reports here (it is their :class:`~metricsfacade.handles.RecordErrors`), and so
do push backends, about lines they could not deliver. In strict mode a bad recording raises
RecordError instead, for tests and development.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from metricsfacade.backends.base import Backend, ReportDrop
from metricsfacade.errors import RecordError
from metricsfacade.handles import Counter, MetricHandle, RecordFn
from metricsfacade.store import NegativeObservation

logger = logging.getLogger("metricsfacade")

#: (name, help, label names) -> the counter, declared exempt from the cardinality limit
DeclareCounter = Callable[[str, str, Sequence[str]], Counter]


class DropAccounting:
    """Counts dropped recordings, folded series and undeliverable lines in metricsfacade's
    own counters. Built before any metric exists; :meth:`declare_counters` adds its own."""

    def __init__(self) -> None:
        self.strict = False
        self._reported: set[tuple[str, str]] = set()

    def declare_counters(self, declare: DeclareCounter) -> None:
        self._dropped = declare(
            "metricsfacade_dropped_total",
            "Recordings dropped because they were invalid or a backend failed",
            ["metric", "reason"],
        )
        self._overflowed = declare(
            "metricsfacade_cardinality_overflow_total",
            "Recordings folded into a metric's overflow series past the cardinality limit",
            ["metric"],
        )
        self._undelivered = declare(
            "metricsfacade_backend_dropped_total",
            "Lines a push backend could not deliver (agent down, too long, closing)",
            ["backend", "reason"],
        )

    # -- the handles' error sink -----------------------------------------------------------

    def reject(self, handle: MetricHandle[Any], reason: str, detail: str) -> None:
        """Count and drop (log once per metric and reason), or raise in strict mode."""
        if handle is self._dropped and not self.strict:
            return  # a bad recording of the drop counter itself: nowhere left to count it
        self.reject_recording(handle.spec.name, reason, detail)

    def record_failed(self, handle: MetricHandle[Any], exc: Exception, value: object) -> None:
        """Recording raised: a value that is not a number, or a fault in the store."""
        if isinstance(exc, OverflowError):
            self.reject(handle, "out_of_range", str(exc))
        elif isinstance(exc, NegativeObservation):
            self.reject(handle, "negative_value", str(exc))
        elif isinstance(value, (int, float)):
            self._store_failed(handle, exc)
        else:
            self.reject(handle, "invalid_value", f"value {value!r} is not a number")

    # -- for the facade's public methods ---------------------------------------------------

    def reject_recording(self, metric: str, reason: str, detail: str) -> None:
        if self.strict:
            raise RecordError(f"metric {metric!r}: {detail}")
        self.count_dropped(metric, reason, detail)

    def count_dropped(self, metric: str, reason: str, detail: str, count: float = 1) -> None:
        self._dropped.labels(metric, reason).inc(count)
        self._report_once(metric, reason, f"dropped a recording of {metric!r}: {detail}")

    def overflow_counter(self, handle: MetricHandle[Any]) -> RecordFn:
        """What the overflow series of ``handle`` also calls for each folded recording."""
        counted = self._overflowed.labels(handle.spec.name)

        def count_overflow(_value: float) -> None:
            counted.inc()

        return count_overflow

    def drop_reporter(self, backend: Backend) -> ReportDrop:
        """Counts a backend's undeliverable lines. The children are bound now, so reporting
        from a flusher thread never waits for the facade's lock."""
        bound = {
            reason: self._undelivered.labels(backend.name, reason)
            for reason in backend.drop_reasons
        }

        def report(reason: str, count: int) -> None:
            child = bound.get(reason) or self._undelivered.labels(backend.name, reason)
            child.inc(count)

        return report

    # -- internals -------------------------------------------------------------------------

    def _store_failed(self, handle: MetricHandle[Any], exc: Exception) -> None:
        name = handle.spec.name
        if self.strict:
            raise RecordError(f"metric {name!r}: recording failed: {exc!r}") from exc
        if handle is not self._dropped:
            self._dropped.labels(name, "backend_error").inc()
        self._report_once(name, "backend_error", f"recording {name!r} failed: {exc!r}")

    def _report_once(self, metric: str, reason: str, message: str) -> None:
        key = (metric, reason)
        if key in self._reported:
            return
        self._reported.add(key)
        logger.warning(
            "metricsfacade: %s (this and later cases are counted in "
            'metricsfacade_dropped_total{metric="%s",reason="%s"}; logged once)',
            message,
            metric,
            reason,
        )
