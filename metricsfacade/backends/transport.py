"""Buffered, fork-safe delivery of StatsD lines over UDP, TCP or Unix sockets.

Recording threads only append a line to a queue (no lock, no syscall). A flusher thread packs
queued lines into packets of at most ``max_packet_size`` bytes (lines joined by newlines,
never split) and sends them: whenever enough lines wait to fill packets, every
``flush_interval`` for what is left, and on ``flush()``/``close()``. A missing agent costs
dropped lines, counted through ``report_drop``, never an exception or a stall in the
application; a failed connection is retried with exponential backoff. After ``os.fork()`` the
child starts with an empty queue (the parent's lines are never sent twice), a socket of its
own and a flusher thread of its own.
"""

from __future__ import annotations

import itertools
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
DROP_REASONS = ("send_failed", "agent_unavailable", "queue_full", "line_too_long", "closing")
MIN_BACKOFF_SECS = 0.1
MAX_BACKOFF_SECS = 30.0
#: Lines waiting beyond this are dropped and counted (the agent is not keeping up).
MAX_QUEUED_LINES = 100_000
#: How long close() may spend sending what is queued (plus one send's socket timeout).
CLOSE_TIMEOUT_SECS = 5.0
#: Queued lines that wake the flusher before its interval: about a full UDP packet's worth.
WAKE_AT_LINES = 1000


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
    """Queues lines from any thread and sends them in packets (see the module docstring)."""

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
        self._max = max_packet_size - len(self._terminator)
        self._interval = flush_interval
        self._report_drop = report_drop
        self._name = name
        self._closed = False
        self._deadline: float | None = None  # set by close(): sending stops past it
        self._warned = False
        self._reset_state()
        self._start_flusher()
        _FORK_SAFE.add(self)

    def _reset_state(self) -> None:
        self._lines: deque[bytes] = deque()
        self._overflowed = itertools.count()  # next() is atomic: a lock-free drop counter
        self._overflow_reported = 0
        self._wake = threading.Event()
        self._send_lock = threading.Lock()  # one packer at a time: flusher, flush(), close()
        self._partial: list[bytes] = []
        self._partial_size = 0

    def set_report_drop(self, report_drop: ReportDrop) -> None:
        self._report_drop = report_drop

    def add(self, line: bytes) -> None:
        """Queue one line. The record path: a length check and an append."""
        lines = self._lines
        if len(lines) < WAKE_AT_LINES:
            lines.append(line)
            return
        if len(lines) < MAX_QUEUED_LINES:
            lines.append(line)
        else:
            next(self._overflowed)
        if not self._wake.is_set():
            self._wake.set()

    def flush(self) -> None:
        """Send everything queued now, from the calling thread."""
        self._send(final=True)

    def close(self, timeout: float = CLOSE_TIMEOUT_SECS) -> None:
        """Stop the flusher and send what is left, giving up after ``timeout`` seconds (plus
        one send's socket timeout): what is still queued then is counted as ``closing``.
        Idempotent."""
        if self._closed:
            return
        self._deadline = time.monotonic() + timeout
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._send_lock.acquire(timeout=max(0.0, self._deadline - time.monotonic())):
            self._send_lock.release()
            self._send(final=True)
            self._backoff.transport.reset()
        else:  # the flusher is stuck in a send: count what waits, cut its socket, let it end
            self._drop("closing", len(self._lines) + len(self._partial))
            self._backoff.transport.reset()
            if thread is not None and thread is not threading.current_thread():
                thread.join(1.0)

    # -- the flusher ----------------------------------------------------------------------

    def _start_flusher(self) -> None:
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name=f"metricsfacade-{self._name}-flush", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic() + self._interval
        while not self._closed:
            woken = self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            if self._closed:
                return
            tick = not woken or time.monotonic() >= next_tick
            if tick:
                next_tick = time.monotonic() + self._interval
            self._send(final=tick)

    def _send(self, final: bool) -> None:
        """Pack queued lines and send full packets; with ``final``, the last partial one too."""
        drops: dict[str, int] = {}
        with self._send_lock:
            lines = self._lines
            while True:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    drops["closing"] = len(lines) + len(self._partial)
                    lines.clear()
                    self._partial, self._partial_size = [], 0
                    break
                try:
                    line = lines.popleft()
                except IndexError:
                    break
                length = len(line)
                if length > self._max:
                    drops["line_too_long"] = drops.get("line_too_long", 0) + 1
                    continue
                if self._partial and self._partial_size + 1 + length > self._max:
                    self._send_packet(drops)
                self._partial_size += length + (1 if self._partial else 0)
                self._partial.append(line)
            if final and self._partial:
                self._send_packet(drops)
            overflowed = next(self._overflowed) - self._overflow_reported
            self._overflow_reported += overflowed + 1  # +1: the next() just above
        if overflowed:
            drops["queue_full"] = overflowed
        for reason, count in drops.items():  # outside the lock: reporting records a metric
            self._drop(reason, count)

    def _send_packet(self, drops: dict[str, int]) -> None:
        packet = b"\n".join(self._partial) + self._terminator
        count = len(self._partial)
        self._partial = []
        self._partial_size = 0
        try:
            self._backoff.send(packet)
        except OSError as exc:
            reason = "agent_unavailable" if isinstance(exc, AgentUnavailable) else "send_failed"
            drops[reason] = drops.get(reason, 0) + count
            if not self._warned and reason == "send_failed":
                self._warned = True
                logger.warning(
                    "metricsfacade: the %s backend cannot send (%s); lines are dropped and "
                    "counted in metricsfacade_backend_dropped_total until it recovers",
                    self._name,
                    exc,
                )

    def _drop(self, reason: str, count: int) -> None:
        try:
            self._report_drop(reason, count)
        except Exception:
            logger.debug("metricsfacade: reporting dropped lines failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        self._reset_state()
        self._backoff = Backoff(self._backoff.transport)
        self._backoff.transport.reset()
        self._thread = None
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
