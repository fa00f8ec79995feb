"""The MCP server process behind the proxy: spawned, told to end, and reaped."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Sequence

logger = logging.getLogger("metricsfacade.proxy")
#: How long a server gets to exit after SIGTERM before SIGKILL (short: by then it has had
#: its end of input and its grace, and a signalled proxy must be gone within 2 s).
TERMINATE_WAIT_SECS = 0.5
#: How long reaping waits after SIGKILL (only a process stuck in the kernel outlasts it).
KILL_WAIT_SECS = 5.0


def _reap(process: subprocess.Popen[bytes], wait_secs: float) -> int | None:
    """Each step bounded: a server is never left behind, nor waited for forever."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(wait_secs)
    logger.warning(
        "metricsfacade proxy: the server (pid %d) is still running %.1f s after its input "
        "ended: sending SIGTERM",
        process.pid,
        wait_secs,
    )
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(TERMINATE_WAIT_SECS)
    logger.warning(
        "metricsfacade proxy: the server (pid %d) ignored SIGTERM for %.1f s: sending SIGKILL",
        process.pid,
        TERMINATE_WAIT_SECS,
    )
    process.kill()
    try:
        return process.wait(KILL_WAIT_SECS)
    except subprocess.TimeoutExpired:  # stuck in the kernel: nothing more can be done
        logger.error("metricsfacade proxy: the server (pid %d) survived SIGKILL", process.pid)
        return None


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

    def stop(self, wait_secs: float) -> int | None:
        """Close its stdin and give it ``wait_secs`` to exit, then SIGTERM and
        ``TERMINATE_WAIT_SECS``, then SIGKILL; closes its pipes. Returns its exit status
        (None when no server ran, or none could be had)."""
        process = self._process
        if process is None:
            return None
        self.close_stdin()
        try:
            return _reap(process, wait_secs)
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
