"""Readiness checks for ``/ready``: each runs in its own thread with a deadline.

A check may also be a coroutine function. The threaded endpoint and the WSGI app run it to
completion in the check's own thread; the ASGI app awaits it on the serving event loop
(``failures_async``), so it may use the application's loop-bound clients (a database pool).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

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
        return _threaded_failures(checks, timeout)

    async def failures_async(self, timeout: float) -> dict[str, str]:
        """``failures`` for an asyncio server: coroutine checks are awaited on the running
        loop, the others run in threads, all concurrently and under one deadline."""
        with self._lock:
            checks = dict(self._checks)
        awaited = {n: c for n, c in checks.items() if inspect.iscoroutinefunction(c)}
        threaded = {n: c for n, c in checks.items() if n not in awaited}
        in_threads = asyncio.ensure_future(asyncio.to_thread(_threaded_failures, threaded, timeout))
        verdicts = await asyncio.gather(
            *(_await_check(check, timeout) for check in awaited.values())
        )
        failures = await in_threads
        failures.update(
            {name: why for name, why in zip(awaited, verdicts, strict=True) if why is not None}
        )
        return {name: failures[name] for name in checks if name in failures}


def _threaded_failures(checks: dict[str, ReadinessCheck], timeout: float) -> dict[str, str]:
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
        if inspect.isawaitable(result):  # a coroutine check, outside an event loop
            result = asyncio.run(_result_of(result))
    except BaseException as exc:  # SystemExit too: it would only end this helper thread
        outcomes[name] = f"raised {type(exc).__name__}: {exc}"
        return
    outcomes[name] = _verdict(result)


async def _result_of(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _await_check(check: ReadinessCheck, timeout: float) -> str | None:
    """Await a coroutine check on this loop: None when it passes, else why it failed."""
    try:
        result = await asyncio.wait_for(_result_of(cast(Awaitable[Any], check())), timeout)
    except asyncio.TimeoutError:
        return f"timed out after {timeout:g}s"
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"
    return _verdict(result)


def _verdict(result: object) -> str | None:
    return "returned False" if result is False else None
