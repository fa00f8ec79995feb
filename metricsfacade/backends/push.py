"""What the StatsD and Datadog backends share: series templates and a queue of lines.

Subclasses choose the transport, the tags and the gauge semantics (StatsD sends deltas,
DogStatsD only absolute values); counters and histograms are the same line either way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from metricsfacade.backends.base import Backend, RecordFn, ReportDrop, ValueOutOfRange
from metricsfacade.backends.lines import LineTemplate, dotted_name, statsd_type
from metricsfacade.backends.transport import DROP_REASONS, LineBuffer
from metricsfacade.spec import Kind, MetricSpec

_INF = math.inf


class PushBackend(Backend):
    """Counters ``c`` (sampled at ``sample_rate``), histograms and timers (in ms) as
    ``histogram_type`` lines, all queued in ``buffer``."""

    drop_reasons = DROP_REASONS

    def __init__(
        self,
        buffer: LineBuffer,
        *,
        prefix: str,
        tags: Sequence[tuple[str, str]],
        tag_format: str,
        histogram_type: str,
        sample_rate: float,
    ) -> None:
        self._buffer = buffer
        self._prefix = prefix
        self._tags = tuple(tags)
        self._tag_format = tag_format
        self._histogram_type = histogram_type
        self._sample_rate = sample_rate

    def template(self, spec: MetricSpec, values: tuple[str, ...], *, signed: bool = False) -> bytes:
        """The ``%``-template of one series' lines (see ``lines.LineTemplate``)."""
        rate = self._sample_rate if spec.kind is Kind.COUNTER else 1.0
        return LineTemplate(
            dotted_name(spec, self._prefix),
            statsd_type(spec, self._histogram_type),
            (*self._tags, *zip(spec.label_names, values, strict=True)),
            self._tag_format,
            sample_rate=rate,
            signed=signed,
        ).template.encode()

    def counter(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        template = self.template(spec, label_values)
        add = self._buffer.add
        rate = self._sample_rate
        if rate >= 1:
            one = template % 1  # inc() by 1 is the common case: its line is made once

            def inc(amount: float) -> None:
                add(one if amount == 1 else template % amount)

            return inc

        def inc_sampled(amount: float) -> None:
            if random.random() < rate:
                add(template % amount)

        return inc_sampled

    def histogram(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        template = self.template(spec, label_values)
        add = self._buffer.add
        if spec.kind is Kind.TIMER:

            def observe_ms(seconds: float) -> None:
                milliseconds = seconds * 1000.0
                if not -_INF < milliseconds < _INF:  # only absurd durations overflow
                    raise ValueOutOfRange(f"{seconds!r} s overflows in milliseconds")
                add(template % milliseconds)

            return observe_ms

        def observe(value: float) -> None:
            add(template % value)

        return observe

    def set_drop_reporter(self, report_drop: ReportDrop) -> None:
        self._buffer.set_report_drop(report_drop)

    def flush(self) -> None:
        self._buffer.flush()

    def close(self) -> None:
        self._buffer.close()


def ignore_drops(reason: str, count: int) -> None:
    """Until the facade attaches its reporter."""
