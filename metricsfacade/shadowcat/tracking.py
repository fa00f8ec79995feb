"""Per-request and per-session helpers: context managers, async context managers, decorators.

A request records its count and duration under its final status, its request and response
sizes, and the latency the proxy itself added: its handling time minus the time spent
waiting for the upstream (marked with ``upstream_wait()`` or ``upstream_started()`` /
``upstream_finished()``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from metricsfacade.shadowcat.metrics import ShadowcatMetrics

F = TypeVar("F", bound=Callable[..., Any])

#: Status values on stdio (HTTP transports use the response's status code).
OK, ERROR, TIMEOUT, CANCELLED = "ok", "error", "timeout", "cancelled"


def status_of(exc_type: type[BaseException] | None) -> str:
    """The status an outcome implies: no exception ok, cancellation, timeout, else error."""
    if exc_type is None:
        return OK
    if issubclass(exc_type, asyncio.CancelledError):
        return CANCELLED
    if issubclass(exc_type, TimeoutError):
        return TIMEOUT
    return ERROR


class RequestTracker:
    """One request in flight. ``finish()`` records it; later calls do nothing."""

    __slots__ = (
        "_finished",
        "_metrics",
        "_start",
        "_upstream_since",
        "_upstream_wait",
        "method",
        "status",
        "transport",
        "upstream",
    )

    def __init__(
        self, metrics: ShadowcatMetrics, method: str, transport: str, upstream: str | None
    ) -> None:
        self._metrics = metrics
        self.method = metrics.method_label(method)
        self.transport = transport
        self.upstream = upstream
        #: set it to override the status the outcome implies ("timeout", 404, ...)
        self.status: str | int | None = None
        self._start = perf_counter()
        self._upstream_wait = 0.0
        self._upstream_since: float | None = None
        self._finished = False

    def request_size(self, size_bytes: float) -> None:
        self._metrics.request_size.labels(self.method, self.transport).observe(size_bytes)

    def response_size(self, size_bytes: float) -> None:
        self._metrics.response_size.labels(self.method, self.transport).observe(size_bytes)

    def upstream_started(self) -> None:
        """The request left for the upstream: the wait until ``upstream_finished`` is not
        latency the proxy added."""
        if self._upstream_since is None:
            self._upstream_since = perf_counter()

    def upstream_finished(self) -> None:
        if self._upstream_since is not None:
            self._upstream_wait += perf_counter() - self._upstream_since
            self._upstream_since = None

    def upstream_wait(self) -> _UpstreamWait:
        """``with req.upstream_wait(): await forward()`` (a plain ``with`` works in async code)."""
        return _UpstreamWait(self)

    def finish(self, status: str | int | None = None, response_size: float | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self.upstream_finished()
        elapsed = perf_counter() - self._start
        metrics = self._metrics
        final = metrics.status_label(status if status is not None else self.status or OK)
        metrics.requests.labels(self.method, self.transport, final).inc()
        metrics.request_duration.labels(self.method, self.transport, final).observe(elapsed)
        if response_size is not None:
            self.response_size(response_size)
        if self.upstream is not None:
            added = max(0.0, elapsed - self._upstream_wait)
            metrics.proxy_latency.labels(self.upstream).observe(added)


class _UpstreamWait:
    __slots__ = ("_tracker",)

    def __init__(self, tracker: RequestTracker) -> None:
        self._tracker = tracker

    def __enter__(self) -> None:
        self._tracker.upstream_started()

    def __exit__(self, *exc_info: object) -> None:
        self._tracker.upstream_finished()


class TrackRequest:
    """``track_request(...)``: a context manager, an async context manager, or a decorator.

    The status comes from the outcome (``ok``, ``error``, ``timeout``, ``cancelled``) unless
    set on the tracker; an exception always propagates unchanged.
    """

    __slots__ = ("_args", "_tracker")

    def __init__(
        self, metrics: ShadowcatMetrics, method: str, transport: str, upstream: str | None
    ) -> None:
        self._args = (metrics, method, transport, upstream)
        self._tracker: RequestTracker | None = None

    def __enter__(self) -> RequestTracker:
        self._tracker = RequestTracker(*self._args)
        return self._tracker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        tracker = self._tracker
        if tracker is not None:
            self._tracker = None
            tracker.finish(tracker.status if tracker.status is not None else status_of(exc_type))

    async def __aenter__(self) -> RequestTracker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __call__(self, func: F) -> F:
        args = self._args
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def tracked_coroutine(*call_args: Any, **kwargs: Any) -> Any:
                async with TrackRequest(*args):
                    return await func(*call_args, **kwargs)

            return tracked_coroutine  # type: ignore[return-value]

        @functools.wraps(func)
        def tracked(*call_args: Any, **kwargs: Any) -> Any:
            with TrackRequest(*args):
                return func(*call_args, **kwargs)

        return tracked  # type: ignore[return-value]


class Session:
    """Active sessions up on enter; down, and the duration observed, on exit (always)."""

    __slots__ = ("_metrics", "_start")

    def __init__(self, metrics: ShadowcatMetrics) -> None:
        self._metrics = metrics
        self._start = 0.0

    def __enter__(self) -> Session:
        self._start = perf_counter()
        self._metrics.active_sessions.inc()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._metrics.active_sessions.dec()
        self._metrics.session_duration.observe(perf_counter() - self._start)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)
