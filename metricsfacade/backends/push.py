"""What the StatsD and Datadog backends share: turning a flush's changes into lines.

Per flush, a counter series that grew is one ``name:INCREASE|c`` line and a gauge whose value
changed is one absolute ``name:VALUE|g`` line. Histograms and timers (in milliseconds) send
the observations sampled since the previous flush: all of them up to the sample limit, else a
uniform sample with ``|@rate`` so the agent scales the count back to what was observed.
Subclasses choose the transport, the tags and how several values share a line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from metricsfacade.backends.base import PushBackend, ReportDrop
from metricsfacade.backends.lines import (
    SeriesFormat,
    dotted_name,
    format_number,
    format_rate,
    statsd_type,
)
from metricsfacade.backends.transport import DROP_REASONS, Packer
from metricsfacade.spec import Kind, MetricSpec
from metricsfacade.store import Changes

logger = logging.getLogger("metricsfacade")
#: the counter of undeliverable lines, labelled backend and reason
UNDELIVERED = "metricsfacade_backend_dropped_total"


class LinePushBackend(PushBackend):
    """Formats changes as (Dog)StatsD lines and sends them through ``packer``."""

    drop_reasons = DROP_REASONS

    def __init__(
        self,
        packer: Packer,
        *,
        prefix: str,
        tags: Sequence[tuple[str, str]],
        tag_format: str,
        histogram_type: str,
        flush_interval: float,
        trailer: str = "",
    ) -> None:
        self._packer = packer
        self._prefix = prefix
        self._tags = tuple(tags)
        self._tag_format = tag_format
        self._histogram_type = histogram_type
        self._trailer = trailer
        self.flush_interval = flush_interval
        self._formats: dict[tuple[str, tuple[str, ...]], SeriesFormat] = {}

    def series_format(self, spec: MetricSpec, label_values: tuple[str, ...]) -> SeriesFormat:
        """The cached fixed parts of a series' lines."""
        key = (spec.key, label_values)
        found = self._formats.get(key)
        if found is None:
            found = SeriesFormat(
                dotted_name(spec, self._prefix),
                (*self._tags, *zip(spec.label_names, label_values, strict=True)),
                self._tag_format,
                self._trailer,
            )
            self._formats[key] = found
        return found

    def send(self, changes: Changes) -> None:
        lines: list[bytes] = []
        for spec, values, increase in changes.counters:
            if spec.name == UNDELIVERED and values[0] == self.name:
                continue  # a backend's own failures go to the others: sent here, they'd fail too
            lines.append(self.series_format(spec, values).line(format_number(increase), "c"))
        for spec, values, value in changes.gauges:
            lines.append(self.gauge_line(self.series_format(spec, values), value))
        for spec, values, samples in changes.histograms:
            numbers = samples.values
            if spec.kind is Kind.TIMER:  # the timer refuses durations that overflow in ms
                numbers = [seconds * 1000.0 for seconds in numbers]
            lines.extend(
                self.histogram_lines(
                    self.series_format(spec, values),
                    statsd_type(spec, self._histogram_type),
                    [format_number(number) for number in numbers],
                    format_rate(samples.rate),
                )
            )
        if lines:
            self._packer.send(lines)

    def gauge_line(self, series: SeriesFormat, value: float) -> bytes:
        """One gauge's absolute value."""
        return series.line(format_number(value), "g")

    def histogram_lines(
        self, series: SeriesFormat, metric_type: str, values: list[str], rate: str
    ) -> Iterable[bytes]:
        """One line per value (StatsD); DogStatsD packs several values per line."""
        return [series.line(value, metric_type, rate) for value in values]

    def set_drop_reporter(self, report_drop: ReportDrop) -> None:
        self._packer.report_drop = report_drop

    def reconnect(self) -> None:
        self._packer.reset()

    def close_by(self, deadline: float) -> None:
        self._packer.deadline = deadline

    def close(self) -> None:
        self._packer.reset()


def warn_if_sampled(backend: str, sample_rate: float) -> None:
    """``sample_rate`` no longer means anything: counters are summed, never sampled."""
    if sample_rate < 1:
        logger.warning(
            "metricsfacade: [%s] sample_rate = %g is ignored: counters are summed in process "
            "and sent once per flush, so none need sampling",
            backend,
            sample_rate,
        )
