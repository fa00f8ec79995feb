"""Line I/O that never blocks, for the proxy's single relay thread.

One thread relays both directions, so it must never wait on one peer while the other has
something to say: reads happen only when ``poll`` reports data, and writes go to
non-blocking pipes, keeping whatever the reader has not taken yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections import deque
from time import perf_counter
from typing import Any

#: What one read asks for: a pipe holds 64 KiB. Larger (256 KiB was tried) and the C
#: allocator maps fresh pages for every read and unmaps them after: four page faults per
#: request, about 90 µs of a round trip on a virtual machine.
READ_CHUNK = 64 * 1024
#: Stop reading a side whose peer has this much of our output still to take (back-pressure).
HIGH_WATER_BYTES = 1024 * 1024
#: What is kept of a line dropped for its length: enough for the id and method of a request.
DROPPED_HEAD_BYTES = 4096
#: Index of the "relayed at" time in a relay entry (see ``metricsfacade.proxy.core``).
RELAYED_AT = 3


def make_nonblocking(fd: int) -> int | None:
    """Make writes to a pipe or socket non-blocking; returns the old flags to restore,
    or None for a terminal or a file, which stay as they are (they belong to others too)."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return flags


class LineInput:
    """Splits what arrives on a file descriptor into lines, dropping lines over the limit."""

    def __init__(self, fd: int, max_line_bytes: int) -> None:
        self.fd = fd
        self._limit = max_line_bytes
        self._parts: list[bytes] = []  # the start of a line still arriving
        self._partial_bytes = 0
        self._skipping = False  # the rest of a line over the limit is still arriving
        #: the first ``DROPPED_HEAD_BYTES`` of each line dropped for its length since the
        #: owner last cleared this
        self.dropped: list[bytes] = []
        self.at_eof = False

    def read(self) -> list[bytes]:
        """The complete lines (newline included) that one read brings; call it when poll
        reports the descriptor readable. At end of input a last unterminated line counts."""
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.at_eof = True
            rest = b"".join(self._parts)
            self._parts.clear()
            return [rest] if rest and not self._skipping else []
        newline = data.find(b"\n")
        if newline == len(data) - 1 and not self._parts and not self._skipping:
            return [data] if len(data) <= self._limit else self._dropped(data)  # the usual case
        if newline < 0:
            self._keep(data)
            return []
        first, *middle, tail = data.split(b"\n")
        lines: list[bytes] = []
        if self._skipping:
            self._skipping = False
        else:
            self._add(lines, b"".join([*self._parts, first]))
        self._parts.clear()
        self._partial_bytes = 0
        for piece in middle:
            self._add(lines, piece)
        if tail:
            self._keep(tail)
        return lines

    def _add(self, lines: list[bytes], piece: bytes) -> None:
        if len(piece) + 1 > self._limit:
            self.dropped.append(piece[:DROPPED_HEAD_BYTES])
        else:
            lines.append(piece + b"\n")

    def _keep(self, data: bytes) -> None:
        """Part of a line; once it cannot fit the limit, it is dropped as it arrives."""
        if self._skipping:
            return
        self._parts.append(data)
        self._partial_bytes += len(data)
        if self._partial_bytes >= self._limit:
            self.dropped.append(b"".join(self._parts)[:DROPPED_HEAD_BYTES])
            self._parts.clear()
            self._partial_bytes = 0
            self._skipping = True

    def _dropped(self, line: bytes) -> list[bytes]:
        self.dropped.append(line[:DROPPED_HEAD_BYTES])
        return []


class LineOutput:
    """Writes to a file descriptor without waiting for its reader, keeping the rest.

    A relay entry passed with a line gets its "relayed at" time once the line's last byte
    is written (or cannot be: a reader gone is ``broken``, and its lines count as sent)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._restore_flags = make_nonblocking(fd)
        self._buffer = bytearray()
        self._written = 0  # bytes written since the start
        self._waiting: deque[tuple[int, list[Any]]] = deque()  # (end offset, entry)
        self._own: deque[tuple[int, int]] = deque()  # (end offset, bytes) of "own" lines
        #: Bytes of the lines written with ``own=True`` (the proxy's own answers) not yet
        #: taken by the reader.
        self.own_pending = 0
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes accepted but not yet taken by the reader."""
        return len(self._buffer)

    def write(self, line: bytes, entry: list[Any] | None = None, *, own: bool = False) -> None:
        if not self._buffer and not self.broken:
            written = self._write(line)
            self._written += written
            line = line[written:] if written < len(line) else b""
        if not line or self.broken:
            if entry is not None:
                entry[RELAYED_AT] = perf_counter()
            return
        self._buffer += line
        end = self._written + len(self._buffer)
        if entry is not None:
            self._waiting.append((end, entry))
        if own:
            self._own.append((end, len(line)))
            self.own_pending += len(line)

    def flush(self) -> None:
        """Write what the reader can take now (call it when poll reports it writable)."""
        if not self._buffer:
            return
        written = self._write(self._buffer)
        del self._buffer[:written]
        self._written += written
        if self.broken:
            self._buffer.clear()
        self._stamp()

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:  # the reader is gone (EPIPE) or the descriptor closed
            self.broken = True
            return 0

    def _stamp(self) -> None:
        own = self._own
        while own and (self.broken or own[0][0] <= self._written):
            self.own_pending -= own.popleft()[1]
        now = perf_counter()
        waiting = self._waiting
        while waiting and (self.broken or waiting[0][0] <= self._written):
            waiting.popleft()[1][RELAYED_AT] = now

    def release(self) -> None:
        """Give up on what is left (the reader is gone or we are done): the lines count as
        sent, and the descriptor's flags are as we found them."""
        self.broken = True
        self._buffer.clear()
        self._stamp()
        if self._restore_flags is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._restore_flags)
            self._restore_flags = None
