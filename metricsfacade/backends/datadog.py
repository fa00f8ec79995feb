"""Datadog backend: DogStatsD lines sent through ``datadog``'s DogStatsd client.

DogStatsd resolves where the agent is (arguments, else DD_DOGSTATSD_URL, DD_AGENT_HOST,
DD_DOGSTATSD_PORT), adds DD_ENV/DD_SERVICE/DD_VERSION as tags and owns the UDP or Unix
socket. Its own buffering, aggregation and telemetry threads stay off: lines are built from
per-series templates and packed by our ``LineBuffer``, so recording never takes its locks or
makes a syscall. Gauges are tracked here and sent as absolute values (DogStatsD has no
deltas); histograms and timers go out as ``h`` or ``d`` with timers in milliseconds.
"""

from __future__ import annotations

import math
import random
import socket
import struct
import threading

from datadog.dogstatsd.base import DogStatsd

from metricsfacade.backends.base import (
    Backend,
    GaugeOps,
    RecordFn,
    ReportDrop,
    ValueOutOfRange,
)
from metricsfacade.backends.lines import LineTemplate, dotted_name, statsd_type
from metricsfacade.backends.transport import DROP_REASONS, LineBuffer
from metricsfacade.config import DatadogSettings, MetricsConfig
from metricsfacade.spec import Kind, MetricSpec

_INF = math.inf
UDP_MAX_PACKET = 1432
UDS_MAX_PACKET = 8192


class DogStatsdTransport:
    stream = False

    def __init__(self, client: DogStatsd) -> None:
        self.client = client

    def send(self, payload: bytes) -> None:
        sock = self.client.get_socket()
        if sock.type == socket.SOCK_STREAM:  # DogStatsD framing on unixstream:// sockets
            payload = struct.pack("<I", len(payload)) + payload
        sock.send(payload)

    def reset(self) -> None:
        self.client.close_socket()


class DatadogBackend(Backend):
    drop_reasons = DROP_REASONS
    name = "datadog"

    def __init__(self, settings: DatadogSettings, common_labels: dict[str, str]) -> None:
        self._settings = settings
        self.client = DogStatsd(
            host=settings.host,
            port=settings.port,
            socket_path=settings.socket_path,
            disable_buffering=True,
            disable_aggregation=True,
            disable_telemetry=True,
        )
        env_tags = [tag.partition(":") for tag in self.client.constant_tags]
        self._tags = (
            *common_labels.items(),
            *settings.constant_tags.items(),
            *((key, value) for key, _, value in env_tags),
        )
        default_size = UDS_MAX_PACKET if self.client.socket_path else UDP_MAX_PACKET
        self._buffer = LineBuffer(
            DogStatsdTransport(self.client),
            settings.max_packet_size or default_size,
            settings.flush_interval_secs,
            _ignore_drops,
            name=self.name,
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> DatadogBackend:
        return cls(config.datadog, dict(config.common_labels))

    def set_drop_reporter(self, report_drop: ReportDrop) -> None:
        self._buffer.set_report_drop(report_drop)

    def _template(self, spec: MetricSpec, values: tuple[str, ...]) -> bytes:
        settings = self._settings
        tags = (*self._tags, *zip(spec.label_names, values, strict=True))
        rate = settings.sample_rate if spec.kind is Kind.COUNTER else 1.0
        template = LineTemplate(
            dotted_name(spec, settings.namespace),
            statsd_type(spec, settings.histogram_type),
            tags,
            "dogstatsd",
            sample_rate=rate,
        )
        return template.template.encode()

    def counter(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        template = self._template(spec, label_values)
        add = self._buffer.add
        rate = self._settings.sample_rate
        if rate >= 1:
            one = template % 1  # inc() by 1 is the common case: its line is made once

            def inc(amount: float) -> None:
                add(one if amount == 1 else template % amount)

            return inc

        def inc_sampled(amount: float) -> None:
            if random.random() < rate:
                add(template % amount)

        return inc_sampled

    def gauge(self, spec: MetricSpec, label_values: tuple[str, ...]) -> GaugeOps:
        template = self._template(spec, label_values)
        add = self._buffer.add
        lock = threading.Lock()
        current = [0.0]

        def set_gauge(value: float) -> None:
            with lock:
                current[0] = value
                add(template % value)

        def add_to_gauge(amount: float) -> None:
            with lock:  # the line sent under the lock, so lines arrive in value order
                value = current[0] + amount
                if not -_INF < value < _INF:
                    raise ValueOutOfRange(f"gauge {current[0]!r} + {amount!r} overflows")
                current[0] = value
                add(template % value)

        return GaugeOps(set=set_gauge, add=add_to_gauge)

    def histogram(self, spec: MetricSpec, label_values: tuple[str, ...]) -> RecordFn:
        template = self._template(spec, label_values)
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

    def flush(self) -> None:
        self._buffer.flush()

    def close(self) -> None:
        self._buffer.close()
        self.client.close_socket()


def _ignore_drops(reason: str, count: int) -> None:
    """Until the facade attaches its reporter."""
