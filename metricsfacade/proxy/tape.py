"""Tape recording: every message with its time and direction, as JSON lines.

A writer thread does the writing, so a slow disk delays the tape, never the relay."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from typing import BinaryIO

from metricsfacade.shadowcat import ShadowcatMetrics

logger = logging.getLogger("metricsfacade.proxy")
CLIENT_TO_SERVER, SERVER_TO_CLIENT = "client_to_server", "server_to_client"
#: the proxy's own answers (errors for timeouts, refusals, rate limits)
PROXY_TO_CLIENT = "proxy_to_client"


class TapeRecorder:
    def __init__(self, path: str, metrics: ShadowcatMetrics, transport: str = "stdio") -> None:
        self._path = path
        self._metrics = metrics
        self._transport = transport
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all, name="proxy-tape", daemon=True)
        self._writer.start()
        self._closed = False
        # What was queued and what the writer took, in bytes (each counter is written by one
        # thread only): their difference is the backlog a slow disk leaves in memory.
        self._queued_bytes = 0
        self._written_bytes = 0
        metrics.tape_operation("open")

    @property
    def backlog(self) -> int:
        """Bytes queued for the file and not yet written (the relay stops reading its peers
        while this is over its bound: a disk far behind delays the relay, bounded memory)."""
        return self._queued_bytes - self._written_bytes

    def record(self, direction: str, line: bytes, at: float | None = None) -> None:
        """Append one message; ``at`` is when it was read (seconds since the epoch)."""
        if self._closed:
            return
        entry = {
            "ts": time.time() if at is None else at,
            "direction": direction,
            "message": line.rstrip(b"\n").decode("utf-8", "replace"),
        }
        data = json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        self._queued_bytes += len(data)
        self._queue.put(data)
        self._metrics.tape_operation("record")

    def _write_all(self) -> None:
        failed = False
        while (data := self._queue.get()) is not None:
            if not failed:
                try:
                    self._file.write(data)
                except OSError as exc:  # a full disk must not stop the proxy: the tape stops
                    logger.error("metricsfacade proxy: writing the tape failed: %s", exc)
                    failed = True
            self._written_bytes += len(data)
        with contextlib.suppress(OSError):
            self._file.close()

    def close(self) -> None:
        """Write what is queued, then close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._metrics.tape_operation("close")
        self._metrics.tape_size(self._transport, os.path.getsize(self._path))
