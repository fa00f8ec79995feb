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
from collections.abc import Mapping
from typing import Any

import attrs

from metricsfacade import settings as parse
from metricsfacade.backends.base import unresolvable
from metricsfacade.backends.lines import SeriesFormat, format_number
from metricsfacade.backends.push import LinePushBackend, warn_if_sampled
from metricsfacade.backends.transport import Packer
from metricsfacade.settings import InvalidSetting, setting

UDP_MAX_PACKET = 1432
STREAM_MAX_PACKET = 8192
CONNECT_TIMEOUT_SECS = 2.0
#: An agent that cannot take one packet in this long is stalled: the send fails (counted),
#: and later flushes skip it during the backoff, so a flush() never blocks its caller long.
SEND_TIMEOUT_SECS = 0.5


@attrs.frozen
class StatsdSettings:
    """The ``[statsd]`` table."""

    host: str = setting("127.0.0.1", parse.host)
    port: int = setting(8125, parse.integer(1, 65535), parse.integer_text(1, 65535))
    #: "udp", "tcp", or "unix" (a Unix stream socket at ``socket_path``)
    protocol: str = setting("udp", parse.choice("udp", "tcp", "unix"))
    socket_path: str | None = setting(None, parse.optional_string)
    #: dotted prefix put before every name, e.g. "myapp.prod"
    prefix: str = setting("", parse.prefix)
    #: "dogstatsd": labels as |#k:v tags; "none": label values folded into the dotted name
    tag_format: str = setting("dogstatsd", parse.choice("dogstatsd", "none"))
    #: line type of histograms and timers; the Etsy daemon treats h and d as counters
    histogram_type: str = setting("ms", parse.choice("ms", "h", "d"))
    #: ignored (every change is sent; histograms are sampled past max_samples_per_flush)
    sample_rate: float = setting(1.0, parse.sample_rate, parse.sample_rate_text)
    #: bytes per datagram; default 1432 on UDP, 8192 on TCP and Unix sockets
    max_packet_size: int | None = setting(
        None, parse.optional_integer(64, 65_000), parse.integer_text(64, 65_000)
    )
    flush_interval_secs: float = setting(0.5, parse.positive_float, parse.positive_float_text)

    def __attrs_post_init__(self) -> None:
        if self.protocol == "unix" and self.socket_path is None:
            raise InvalidSetting("socket_path: required when protocol is 'unix'")


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
        return _connected(socket.socket(family, kind, proto), address)

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
        return _connected(sock, settings.socket_path)

    def reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes a send blocked in sendall()
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _connected(sock: socket.socket, address: Any) -> socket.socket:
    """``sock`` connected to ``address``; closed if that fails."""
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class StatsdBackend(LinePushBackend):
    name = "statsd"
    Settings = StatsdSettings

    def __init__(self, settings: StatsdSettings, common_labels: Mapping[str, str]) -> None:
        self.settings = settings
        self.over_udp = settings.protocol == "udp"
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
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> StatsdBackend:
        return cls(settings, common_labels)

    def describe(self) -> str:
        settings = self.settings
        if settings.protocol == "unix":
            return f"unix://{settings.socket_path}"
        return f"{settings.protocol}://{settings.host}:{settings.port}"

    def probe(self) -> str | None:
        if self.settings.protocol == "unix":
            return None
        return unresolvable(self.settings.host, self.settings.port)

    def gauge_line(self, series: SeriesFormat, value: float) -> bytes:
        if value >= 0:
            return series.line(format_number(value + 0.0), "g")  # + 0.0: no "-0|g" delta
        # "-N|g" alone would be a delta: reset to 0 first, in one packet
        return series.line("0", "g") + b"\n" + series.line(format_number(value), "g")
