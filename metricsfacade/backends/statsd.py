"""StatsD backend: lines to a StatsD daemon over UDP, TCP or a Unix stream socket.

This backend owns its socket. The ``statsd`` package's clients cannot carry what is sent
here: they encode ASCII only, have no tags, sample by dropping values at random instead of
sending a weighted sample, and swallow send errors, which must be counted. Types: counters
``c``, gauges ``g`` (absolute; a negative value as ``0`` then ``-N``, since ``-N|g`` alone is a
delta), histograms and timers ``ms`` by default (timers in milliseconds).
"""

from __future__ import annotations

import contextlib
import socket

from metricsfacade.backends.lines import SeriesFormat, format_number
from metricsfacade.backends.push import LinePushBackend, warn_if_sampled
from metricsfacade.backends.transport import Packer
from metricsfacade.config import MetricsConfig, StatsdSettings

UDP_MAX_PACKET = 1432
STREAM_MAX_PACKET = 8192
CONNECT_TIMEOUT_SECS = 2.0
#: An agent that cannot take one packet in this long is stalled: the send fails (counted),
#: and later flushes skip it during the backoff, so a flush() never blocks its caller long.
SEND_TIMEOUT_SECS = 0.5


class UdpTransport:
    """A connected UDP socket: it hears the ICMP "port unreachable" of an absent agent, so
    the next send fails with ECONNREFUSED and the lines are counted, not lost unseen."""

    stream = False

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._sock: socket.socket | None = None

    def send(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            sock = self._sock = self._connect()
        sock.send(payload)  # a local: reset() from another thread makes this fail, not crash

    def _connect(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            *self._address, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class StreamTransport:
    """TCP or a Unix stream socket, connected on first send and after every failure."""

    stream = True

    def __init__(self, settings: StatsdSettings) -> None:
        self.settings = settings
        self._sock: socket.socket | None = None

    def send(self, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            sock = self._sock = self._connect()
            sock.settimeout(SEND_TIMEOUT_SECS)
        sock.sendall(payload)  # a local: reset() from another thread makes this fail

    def _connect(self) -> socket.socket:
        settings = self.settings
        if settings.protocol == "tcp":
            return socket.create_connection(
                (settings.host, settings.port), timeout=CONNECT_TIMEOUT_SECS
            )
        assert settings.socket_path is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_SECS)
        try:
            sock.connect(settings.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes a send blocked in sendall()
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class StatsdBackend(LinePushBackend):
    name = "statsd"

    def __init__(self, settings: StatsdSettings, common_labels: dict[str, str]) -> None:
        self.settings = settings
        if settings.protocol == "udp":
            transport: UdpTransport | StreamTransport = UdpTransport(settings.host, settings.port)
            default_size = UDP_MAX_PACKET
        else:
            transport = StreamTransport(settings)
            default_size = STREAM_MAX_PACKET
        warn_if_sampled(self.name, settings.sample_rate)
        super().__init__(
            Packer(transport, settings.max_packet_size or default_size, self.name),
            prefix=settings.prefix,
            tags=tuple(common_labels.items()),
            tag_format=settings.tag_format,
            histogram_type=settings.histogram_type,
            flush_interval=settings.flush_interval_secs,
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> StatsdBackend:
        return cls(config.statsd, dict(config.common_labels))

    def gauge_line(self, series: SeriesFormat, value: float) -> bytes:
        if value >= 0:
            return series.line(format_number(value + 0.0), "g")  # + 0.0: no "-0|g" delta
        # "-N|g" alone would be a delta: reset to 0 first, in one packet
        return series.line("0", "g") + b"\n" + series.line(format_number(value), "g")
