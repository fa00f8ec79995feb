"""One bench path: a process speaking MCP over pipes, timed request by request."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Any


class Peer:
    """One path: a process speaking MCP over pipes, already initialized."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        self._in: IO[bytes] = stdin
        self._out: IO[bytes] = stdout
        self._next_id = 0
        self.call(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "metricsfacade-bench", "version": "1"},
            },
        )
        self._in.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self._in.flush()

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, method: str, params: dict[str, Any]) -> float:
        """Send one request, wait for its response; the round trip in seconds."""
        self._next_id += 1
        line = (
            json.dumps(
                {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
            ).encode()
            + b"\n"
        )
        started = time.perf_counter()
        self._in.write(line)
        self._in.flush()
        response = self._out.readline()
        elapsed = time.perf_counter() - started
        if not response:
            raise RuntimeError(f"{method}: the peer closed its output")
        return elapsed

    def close(self) -> None:
        self._in.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
