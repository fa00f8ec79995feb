"""Buffered, fork-safe delivery of StatsD lines over UDP, TCP or Unix sockets.

Recording threads only append bytes to a packet under a lock: they never touch a socket.
A full packet (``max_packet_size`` bytes, lines joined by newlines) is queued and a flusher
thread sends it; the flusher also sends the partial packet every ``flush_interval``, and
``close()`` sends everything left. A missing agent costs dropped lines, counted through
``report_drop``, never an exception or a stall in the application; a failed connection is
retried with exponential backoff. After ``os.fork()`` the child starts with an empty buffer
(so the parent's lines are never sent twice), a socket of its own and a new flusher thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("metricsfacade.transport")

ReportDrop = Callable[[str, int], None]
MIN_BACKOFF_SECS = 0.1
MAX_BACKOFF_SECS = 30.0
#: Packets waiting for the flusher beyond this are dropped (the agent is not keeping up).
MAX_QUEUED_PACKETS = 1024


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

    def send(self, payload: bytes) -> None:
        if time.monotonic() < self._retry_at:
            raise AgentUnavailable("waiting to reconnect")
        try:
            self.transport.send(payload)
        except OSError:
            self.transport.reset()
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, MAX_BACKOFF_SECS)
            raise
        self._delay = MIN_BACKOFF_SECS


class LineBuffer:
    """Packs lines into packets and hands them to a flusher thread (see the module doc)."""

    def __init__(
        self,
        transport: Transport,
        max_packet_size: int,
        flush_interval: float,
        report_drop: ReportDrop,
        name: str = "statsd",
    ) -> None:
        self._backoff = Backoff(transport)
        self._terminator = b"\n" if transport.stream else b""
        self._max = max_packet_size
        self._interval = flush_interval
        self._report_drop = report_drop
        self._name = name
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        self._size = 0
        self._packets: deque[bytes] = deque()
        self._pending_drops = 0  # lines of packets refused because the queue was full
        self._wake = threading.Event()
        self._closed = False
        self._warned = False
        self._thread: threading.Thread | None = None
        self._start_flusher()
        _FORK_SAFE.add(self)

    def set_report_drop(self, report_drop: ReportDrop) -> None:
        self._report_drop = report_drop

    def add(self, line: bytes) -> None:
        """Buffer one line; called on the record path, so it only appends."""
        length = len(line)
        with self._lock:
            if self._lines and self._size + 1 + length > self._max:
                self._seal()
            if length <= self._max:
                self._size += length + (1 if self._lines else 0)
                self._lines.append(line)
                return
        self._drop("line_too_long", 1)

    def flush(self) -> None:
        """Send everything buffered now, from the calling thread."""
        with self._lock:
            if self._lines:
                self._seal()
        self._send_queued()

    def close(self) -> None:
        """Stop the flusher and send what is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        self._backoff.transport.reset()

    # -- internals ----------------------------------------------------------------------

    def _seal(self) -> None:
        """Move the current lines into the send queue. Caller holds the lock."""
        packet = b"\n".join(self._lines) + self._terminator
        count = len(self._lines)
        self._lines = []
        self._size = 0
        if len(self._packets) >= MAX_QUEUED_PACKETS:
            self._pending_drops += count
        else:
            self._packets.append(packet)
        self._wake.set()

    def _start_flusher(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"metricsfacade-{self._name}-flush", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        next_partial = time.monotonic() + self._interval
        while not self._closed:
            self._wake.wait(max(0.0, next_partial - time.monotonic()))
            self._wake.clear()
            if self._closed:
                break
            if time.monotonic() >= next_partial:
                next_partial = time.monotonic() + self._interval
                with self._lock:
                    if self._lines:
                        self._seal()
            self._send_queued()

    def _send_queued(self) -> None:
        with self._lock:
            overflow, self._pending_drops = self._pending_drops, 0
        if overflow:
            self._drop("queue_full", overflow)
        while True:
            try:
                packet = self._packets.popleft()
            except IndexError:
                return
            try:
                self._backoff.send(packet)
            except OSError as exc:
                lines = packet.count(b"\n") + (0 if self._terminator else 1)
                reason = "agent_unavailable" if isinstance(exc, AgentUnavailable) else "send_failed"
                if not self._warned and reason == "send_failed":
                    self._warned = True
                    logger.warning(
                        "metricsfacade: the %s backend cannot send (%s); lines are dropped and "
                        "counted in metricsfacade_backend_dropped_total until it recovers",
                        self._name,
                        exc,
                    )
                self._drop(reason, lines)

    def _drop(self, reason: str, count: int) -> None:
        try:
            self._report_drop(reason, count)
        except Exception:
            logger.debug("metricsfacade: reporting dropped lines failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._lines = []
        self._size = 0
        self._packets = deque()
        self._pending_drops = 0
        self._backoff = Backoff(self._backoff.transport)
        self._backoff.transport.reset()
        if not self._closed:
            self._start_flusher()


class _ForkRegistry:
    """Live buffers, reset in a forked child by one hook registered once."""

    def __init__(self) -> None:
        self._buffers: weakref.WeakSet[LineBuffer] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def add(self, buffer: LineBuffer) -> None:
        self._buffers.add(buffer)

    def _after_fork_in_child(self) -> None:
        for buffer in list(self._buffers):
            buffer._after_fork_in_child()


_FORK_SAFE = _ForkRegistry()
