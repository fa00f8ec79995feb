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
import socket
import struct
import threading

from datadog.dogstatsd.base import DogStatsd

from metricsfacade.backends.base import GaugeOps, ValueOutOfRange
from metricsfacade.backends.push import PushBackend, ignore_drops
from metricsfacade.backends.transport import LineBuffer
from metricsfacade.config import DatadogSettings, MetricsConfig
from metricsfacade.spec import MetricSpec

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


class DatadogBackend(PushBackend):
    name = "datadog"

    def __init__(self, settings: DatadogSettings, common_labels: dict[str, str]) -> None:
        self.client = DogStatsd(
            host=settings.host,
            port=settings.port,
            socket_path=settings.socket_path,
            disable_buffering=True,
            disable_aggregation=True,
            disable_telemetry=True,
        )
        env_tags = [tag.partition(":") for tag in self.client.constant_tags]
        default_size = UDS_MAX_PACKET if self.client.socket_path else UDP_MAX_PACKET
        buffer = LineBuffer(
            DogStatsdTransport(self.client),
            settings.max_packet_size or default_size,
            settings.flush_interval_secs,
            ignore_drops,
            name=self.name,
        )
        super().__init__(
            buffer,
            prefix=settings.namespace,
            tags=(
                *common_labels.items(),
                *settings.constant_tags.items(),
                *((key, value) for key, _, value in env_tags),
            ),
            tag_format="dogstatsd",
            histogram_type=settings.histogram_type,
            sample_rate=settings.sample_rate,
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> DatadogBackend:
        return cls(config.datadog, dict(config.common_labels))

    def gauge(self, spec: MetricSpec, label_values: tuple[str, ...]) -> GaugeOps:
        template = self.template(spec, label_values)
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

    def close(self) -> None:
        super().close()
        self.client.close_socket()
