"""StatsD backend: lines built here, sent through the ``statsd`` package's sockets.

The ``statsd`` package refuses tags and encodes as ASCII, so lines are built from per-series
templates (see ``lines``) and buffered (see ``transport``); its clients still resolve the
address and own the UDP, TCP or Unix socket. Types: counters ``c`` (with ``|@rate`` when
sampled), gauges ``g`` (deltas as ``+N``/``-N``, a negative value as ``0`` then ``-N``),
histograms and timers ``ms`` by default (timers in milliseconds).
"""

from __future__ import annotations

import contextlib
import socket

import statsd

from metricsfacade.backends.base import GaugeOps
from metricsfacade.backends.push import PushBackend, ignore_drops
from metricsfacade.backends.transport import LineBuffer
from metricsfacade.config import MetricsConfig, StatsdSettings
from metricsfacade.spec import MetricSpec

UDP_MAX_PACKET = 1432
STREAM_MAX_PACKET = 8192
CONNECT_TIMEOUT_SECS = 2.0


class UdpTransport:
    stream = False

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._client: statsd.StatsClient | None = None

    def send(self, payload: bytes) -> None:
        if self._client is None:
            client = statsd.StatsClient(self._host, self._port, ipv6=":" in self._host)
            # Connected, the socket hears the ICMP "port unreachable" of an absent agent: the
            # next send fails with ECONNREFUSED and the lines are counted, not lost unseen.
            try:
                client._sock.connect(client._addr)
            except OSError:
                client.close()
                raise
            self._client = client
        # The client's own _send encodes ASCII and swallows errors; we need UTF-8 and to
        # count failures, so its socket is used directly.
        self._client._sock.send(payload)

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class StreamTransport:
    """TCP or a Unix stream socket, connected on first send and after every failure."""

    stream = True

    def __init__(self, settings: StatsdSettings) -> None:
        self.settings = settings
        self._client: statsd.TCPStatsClient | statsd.UnixSocketStatsClient | None = None

    def send(self, payload: bytes) -> None:
        if self._client is None:
            settings = self.settings
            if settings.protocol == "tcp":
                client: statsd.TCPStatsClient | statsd.UnixSocketStatsClient = (
                    statsd.TCPStatsClient(
                        settings.host,
                        settings.port,
                        timeout=CONNECT_TIMEOUT_SECS,
                        ipv6=":" in settings.host,
                    )
                )
            else:
                assert settings.socket_path is not None
                client = statsd.UnixSocketStatsClient(
                    settings.socket_path, timeout=CONNECT_TIMEOUT_SECS
                )
            try:
                client.connect()
            except OSError:
                client.close()  # the client made its socket before connecting
                raise
            self._client = client
        self._client._sock.sendall(payload)

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None and client._sock is not None:
            with contextlib.suppress(OSError):  # wakes a flusher blocked in sendall()
                client._sock.shutdown(socket.SHUT_RDWR)
            client.close()


class StatsdBackend(PushBackend):
    name = "statsd"

    def __init__(self, settings: StatsdSettings, common_labels: dict[str, str]) -> None:
        self.settings = settings
        if settings.protocol == "udp":
            transport: UdpTransport | StreamTransport = UdpTransport(settings.host, settings.port)
            default_size = UDP_MAX_PACKET
        else:
            transport = StreamTransport(settings)
            default_size = STREAM_MAX_PACKET
        buffer = LineBuffer(
            transport,
            settings.max_packet_size or default_size,
            settings.flush_interval_secs,
            ignore_drops,
            name=self.name,
        )
        super().__init__(
            buffer,
            prefix=settings.prefix,
            tags=tuple(common_labels.items()),
            tag_format=settings.tag_format,
            histogram_type=settings.histogram_type,
            sample_rate=settings.sample_rate,
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> StatsdBackend:
        return cls(config.statsd, dict(config.common_labels))

    def gauge(self, spec: MetricSpec, label_values: tuple[str, ...]) -> GaugeOps:
        absolute = self.template(spec, label_values)
        delta = self.template(spec, label_values, signed=True)
        zero = absolute % 0
        add = self._buffer.add

        def set_gauge(value: float) -> None:
            if value > 0:
                add(absolute % value)
            elif value == 0:  # -0.0 too: "-0|g" would be a delta of nothing
                add(zero)
            else:  # "-N|g" alone would be a delta: reset to 0 first, in one unit
                add(zero + b"\n" + delta % value)

        def add_to_gauge(amount: float) -> None:
            add(delta % amount)

        return GaugeOps(set=set_gauge, add=add_to_gauge)
