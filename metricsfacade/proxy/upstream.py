"""The MCP server process behind the proxy: spawned, written to, and stopped."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Sequence
from typing import IO


class Upstream:
    """One run of the server command. Its stderr is the proxy's stderr."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self._process: subprocess.Popen[bytes] | None = None
        self._write_lock = threading.Lock()

    def spawn(self) -> IO[bytes]:
        """Start the server (closing what is left of a previous run); returns its stdout.
        Raises OSError if it cannot start."""
        self._close_pipes()
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert self._process.stdout is not None
        return self._process.stdout

    def send(self, data: bytes) -> None:
        """Write to the server's stdin. Raises OSError (BrokenPipeError) once it is gone."""
        process = self._process
        if process is None or process.stdin is None:
            raise BrokenPipeError("the server is not running")
        with self._write_lock:
            process.stdin.write(data)
            process.stdin.flush()

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def stop(self, grace_secs: float = 2.0) -> int | None:
        """Close its stdin (MCP's way to end a stdio server), then terminate, then kill."""
        process = self._process
        if process is None:
            return None
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            return process.wait(grace_secs)
        except subprocess.TimeoutExpired:
            process.terminate()
        try:
            return process.wait(grace_secs)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        finally:
            self._close_pipes()

    def _close_pipes(self) -> None:
        process = self._process
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
