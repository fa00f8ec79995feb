"""The MCP server process behind the proxy: spawned, told to end, and reaped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence


class Upstream:
    """One run of the server command at a time. Its stderr is the proxy's stderr."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self._process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> tuple[int, int]:
        """Start the server (closing what is left of a previous run); returns the file
        descriptors of its stdin (ours to write) and its stdout (ours to read).
        Raises OSError if it cannot start."""
        self._close_pipes()
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        return self._process.stdin.fileno(), self._process.stdout.fileno()

    def close_stdin(self) -> None:
        """End of input: MCP's way to ask a stdio server to exit."""
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()

    def stop(self, grace_secs: float = 2.0) -> int | None:
        """Close its stdin, wait, then terminate, then kill; closes its pipes. Returns its
        exit status (None when no server ran)."""
        process = self._process
        if process is None:
            return None
        self.close_stdin()
        try:
            return self._reap(process, grace_secs)
        finally:
            self._close_pipes()

    @staticmethod
    def _reap(process: subprocess.Popen[bytes], grace_secs: float) -> int:
        try:
            return process.wait(grace_secs)
        except subprocess.TimeoutExpired:
            process.terminate()
        try:
            return process.wait(grace_secs)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def _close_pipes(self) -> None:
        process = self._process
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
