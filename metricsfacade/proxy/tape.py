"""Tape recording: every message with its time and direction, as JSON lines."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import BinaryIO

from metricsfacade.shadowcat import ShadowcatMetrics

CLIENT_TO_SERVER, SERVER_TO_CLIENT = "client_to_server", "server_to_client"


class TapeRecorder:
    def __init__(self, path: str, metrics: ShadowcatMetrics, transport: str = "stdio") -> None:
        self._path = path
        self._metrics = metrics
        self._transport = transport
        self._lock = threading.Lock()
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed by close()
        metrics.tape_operation("open")

    def record(self, direction: str, line: bytes, at: float | None = None) -> None:
        """Append one message; ``at`` is when it was read (seconds since the epoch)."""
        entry = {
            "ts": time.time() if at is None else at,
            "direction": direction,
            "message": line.rstrip(b"\n").decode("utf-8", "replace"),
        }
        data = json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(data)
        self._metrics.tape_operation("record")

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._file.close()
        self._metrics.tape_operation("close")
        self._metrics.tape_size(self._transport, os.path.getsize(self._path))
