"""Readiness checks for ``/ready``: each runs in its own thread with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ReadinessCheck = Callable[[], object]


class ReadinessChecks:
    """Named checks. A check fails when it raises, returns False, or outlives the timeout.

    Checks run in daemon threads so a hung check costs one parked thread, never the endpoint.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        if not callable(check):
            raise TypeError(f"readiness check {name!r} is not callable: {check!r}")
        with self._lock:
            self._checks[name] = check

    def remove(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def failures(self, timeout: float) -> dict[str, str]:
        """Run every check concurrently; return {name: why it failed} for the failing ones."""
        with self._lock:
            checks = dict(self._checks)
        outcomes: dict[str, str | None] = {}
        threads = []
        for name, check in checks.items():
            thread = threading.Thread(
                target=_run_check,
                args=(name, check, outcomes),
                daemon=True,
                name=f"metricsfacade-ready-{name}",
            )
            thread.start()
            threads.append((name, thread))
        deadline = time.monotonic() + timeout
        failures = {}
        for name, thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                failures[name] = f"timed out after {timeout:g}s"
            elif name not in outcomes:
                failures[name] = "ended without a result"
            elif outcomes[name] is not None:
                failures[name] = str(outcomes[name])
        return failures


def _run_check(name: str, check: ReadinessCheck, outcomes: dict[str, str | None]) -> None:
    try:
        result = check()
    except BaseException as exc:  # SystemExit too: it would only end this helper thread
        outcomes[name] = f"raised {type(exc).__name__}: {exc}"
        return
    outcomes[name] = "returned False" if result is False else None
