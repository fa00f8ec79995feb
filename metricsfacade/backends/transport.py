"""Delivery of StatsD lines: packed into packets, sent over a socket, failures counted.

A flush hands :class:`Packer` its lines; it joins them with newlines into packets of at most
``max_packet_size`` bytes (a line is never split) and sends each. A missing agent costs the
lines of that flush, counted by reason, never an exception or a stall in the application; a
failed connection is retried with exponential backoff. Sending runs on the facade's flusher
thread, never on a recording thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from metricsfacade.backends.base import ReportDrop

logger = logging.getLogger("metricsfacade.transport")

DROP_REASONS = ("send_failed", "agent_unavailable", "line_too_long", "closing")
MIN_BACKOFF_SECS = 0.1
MAX_BACKOFF_SECS = 30.0


class Transport(Protocol):
    """One connection to an agent. ``send`` raises OSError on failure; ``reset`` drops the
    socket so the next ``send`` opens a new one."""

    #: stream sockets need every payload to end with a newline
    stream: bool

    def send(self, payload: bytes) -> None: ...

    def reset(self) -> None: ...


class AgentUnavailable(OSError):
    """Raised while waiting to retry after a failed send."""


class Backoff:
    """Wraps a transport: after a failure, sends fail fast until the retry time."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._delay = MIN_BACKOFF_SECS
        self._retry_at = 0.0
        #: the last send failed: the agent is down or stalled
        self.failing = False

    def send(self, payload: bytes) -> None:
        if time.monotonic() < self._retry_at:
            raise AgentUnavailable("waiting to reconnect")
        try:
            self.transport.send(payload)
        except OSError:
            self.transport.reset()
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, MAX_BACKOFF_SECS)
            self.failing = True
            raise
        self._delay = MIN_BACKOFF_SECS
        self.failing = False


class Packer:
    """Packs lines into packets and sends them through a transport with backoff."""

    def __init__(self, transport: Transport, max_packet_size: int, name: str) -> None:
        self._backoff = Backoff(transport)
        self._terminator = b"\n" if transport.stream else b""
        self._max = max_packet_size - len(self._terminator)
        self._name = name
        self._warned = False
        #: lines of the last datagram sent, which a refusal heard later would concern
        self._unconfirmed = 0
        self.report_drop: ReportDrop = _ignore_drops
        #: set by close: sending stops past it and what is left is counted as "closing"
        self.deadline: float | None = None

    @property
    def max_line(self) -> int:
        """The longest line that fits a packet."""
        return self._max

    def send(self, lines: Iterable[bytes]) -> None:
        """Send every line, in packets; count (never raise) what cannot be delivered. After
        a failed send, the rest of this flush is dropped: one flush waits for at most one
        send's timeout, never for a reconnect per packet. Closing, nothing is sent to an
        agent whose last send failed."""
        drops: dict[str, int] = {}
        # Closing, an agent that just failed gets no new connection: close stays bounded.
        gave_up = self.deadline is not None and self._backoff.failing
        for packet in self._packets(lines, drops):
            if gave_up or drops.keys() & {"send_failed", "agent_unavailable"}:
                _count(drops, "agent_unavailable", len(packet))
            elif self.deadline is not None and time.monotonic() > self.deadline:
                _count(drops, "closing", len(packet))
            else:
                self._send_packet(packet, drops)
        for reason, count in drops.items():
            try:
                self.report_drop(reason, count)
            except Exception:
                logger.debug("metricsfacade: reporting dropped lines failed", exc_info=True)

    def _packets(self, lines: Iterable[bytes], drops: dict[str, int]) -> Iterator[list[bytes]]:
        """Lines joined greedily into packets of at most the packet size, never split."""
        packet: list[bytes] = []
        size = 0
        for line in lines:
            length = len(line)
            if length > self._max:
                _count(drops, "line_too_long", 1)
                continue
            if packet and size + 1 + length > self._max:
                yield packet
                packet, size = [], 0
            size += length + (1 if packet else 0)
            packet.append(line)
        if packet:
            yield packet

    def reset(self) -> None:
        """Drop the connection (after a fork, at close): the next send opens a new one."""
        self._backoff.transport.reset()

    def _send_packet(self, packet: list[bytes], drops: dict[str, int]) -> None:
        try:
            self._backoff.send(b"\n".join(packet) + self._terminator)
        except Exception as exc:  # OSError, or a host the resolver refuses (UnicodeError)
            reason = "agent_unavailable" if isinstance(exc, AgentUnavailable) else "send_failed"
            lost = len(packet)
            if isinstance(exc, ConnectionRefusedError):
                # On UDP the refusal is the ICMP answer to the packet sent before this one:
                # that packet was lost too.
                lost += self._unconfirmed
            self._unconfirmed = 0
            _count(drops, reason, lost)
            if not self._warned and reason == "send_failed":
                self._warned = True
                logger.warning(
                    "metricsfacade: the %s backend cannot send (%s); lines are dropped and "
                    "counted in metricsfacade_backend_dropped_total until it recovers",
                    self._name,
                    exc,
                )
            return
        # A datagram is only known delivered once the next send hears no refusal.
        self._unconfirmed = 0 if self._terminator else len(packet)


def _count(drops: dict[str, int], reason: str, lines: int) -> None:
    drops[reason] = drops.get(reason, 0) + lines


def _ignore_drops(reason: str, count: int) -> None:
    """Until the facade attaches its reporter."""
