"""Per-request and per-session helpers: context managers, async context managers, decorators.

A request records its count and duration under its final status, its request and response
sizes, and the latency the proxy itself added: its handling time minus the time spent
waiting for the upstream (marked with ``upstream_wait()`` or ``upstream_started()`` /
``upstream_finished()``). The series a request touches are resolved once per method and
transport (and status, and upstream) and kept, so a request costs a handful of bound-child
recordings.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from metricsfacade.handles import CounterChild, HistogramChild

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
    if issubclass(exc_type, (TimeoutError, asyncio.TimeoutError)):  # distinct before 3.11
        return TIMEOUT
    return ERROR


def _is_success(status: object) -> bool:
    return status == OK or str(status).startswith("2")


class RequestSeries:
    """The bound children of one (method, transport), and of its statuses as they appear."""

    __slots__ = ("_metrics", "by_status", "method", "request_size", "response_size", "transport")

    def __init__(self, metrics: ShadowcatMetrics, method: str, transport: str) -> None:
        self._metrics = metrics
        self.method = method
        self.transport = transport
        self.request_size = metrics.request_size.labels(method, transport)
        self.response_size = metrics.response_size.labels(method, transport)
        self.by_status: dict[object, tuple[CounterChild, HistogramChild]] = {}

    def for_status(self, status: object) -> tuple[CounterChild, HistogramChild]:
        try:
            children = self.by_status.get(status)
        except TypeError:  # an unhashable status: not cached, its label is "other"
            children = None
        if children is None:
            label = self._metrics.status_label(status)
            metrics = self._metrics
            children = (
                metrics.requests.labels(self.method, self.transport, label),
                metrics.request_duration.labels(self.method, self.transport, label),
            )
            if label == status or (type(status) is int and label != "other"):
                self.by_status[status] = children  # canonical keys only: bounded
        return children


class RequestTracker:
    """One request: ``with``/``async with`` it, decorate with it, or ``finish()`` it.

    The status comes from the outcome (``ok``, ``error``, ``timeout``, ``cancelled``) unless
    ``status`` is set on the tracker (an escaping exception still outranks a success status
    such as ``ok`` or 200); an exception always propagates unchanged. One tracker
    tracks one request; as a decorator it makes a new tracker per call.
    """

    __slots__ = (
        "_finished",
        "_latency",
        "_series",
        "_start",
        "_upstream_since",
        "_upstream_wait",
        "status",
    )

    def __init__(
        self, series: RequestSeries, latency: HistogramChild | None, started_at: float | None = None
    ) -> None:
        self._series = series
        self._latency = latency
        #: set it to override the status the outcome implies ("timeout", 404, ...)
        self.status: str | int | None = None
        self._upstream_wait = 0.0
        self._upstream_since: float | None = None
        self._finished = False
        self._start = perf_counter() if started_at is None else started_at

    @property
    def method(self) -> str:
        """The ``method`` label value: the method, or ``other`` when not allowed."""
        return self._series.method

    def request_size(self, size_bytes: float) -> None:
        self._series.request_size.observe(size_bytes)

    def response_size(self, size_bytes: float) -> None:
        self._series.response_size.observe(size_bytes)

    def upstream_started(self, at: float | None = None) -> None:
        """The request left for the upstream (at ``at``, a ``perf_counter()`` reading, or
        now): the wait until ``upstream_finished`` is not latency the proxy added."""
        if self._upstream_since is None:
            self._upstream_since = perf_counter() if at is None else at

    def upstream_finished(self, at: float | None = None) -> None:
        if self._upstream_since is not None:
            end = perf_counter() if at is None else at
            self._upstream_wait += end - self._upstream_since
            self._upstream_since = None

    def upstream_wait(self) -> _UpstreamWait:
        """``with req.upstream_wait(): await forward()`` (a plain ``with`` works in async code)."""
        return _UpstreamWait(self)

    def finish(
        self,
        status: str | int | None = None,
        response_size: float | None = None,
        at: float | None = None,
    ) -> None:
        """Record the request as ended now (or at ``at``); later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        end = perf_counter() if at is None else at
        self.upstream_finished(end)
        elapsed = end - self._start
        if status is None:
            status = self.status if self.status is not None else OK
        requests, duration = self._series.for_status(status)
        requests.inc()
        duration.observe(elapsed)
        if response_size is not None:
            self._series.response_size.observe(response_size)
        if self._latency is not None:
            self._latency.observe(max(0.0, elapsed - self._upstream_wait))

    # -- context manager, async context manager ---------------------------------------------

    def __enter__(self) -> RequestTracker:
        self._start = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish(self.status if self.status is not None else OK)
        elif self.status is not None and not _is_success(self.status):
            self.finish(self.status)  # a failure status set before raising stands
        else:
            self.finish(status_of(exc_type))  # an escaping exception outranks a success

    async def __aenter__(self) -> RequestTracker:
        self._start = perf_counter()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: Any) -> None:
        self.__exit__(exc_type, *exc_info)

    # -- decorator: a new tracker per call ---------------------------------------------------

    def __call__(self, func: F) -> F:
        series, latency = self._series, self._latency
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def tracked_coroutine(*call_args: Any, **kwargs: Any) -> Any:
                async with RequestTracker(series, latency):
                    return await func(*call_args, **kwargs)

            return tracked_coroutine  # type: ignore[return-value]

        @functools.wraps(func)
        def tracked(*call_args: Any, **kwargs: Any) -> Any:
            with RequestTracker(series, latency):
                return func(*call_args, **kwargs)

        return tracked  # type: ignore[return-value]


class _UpstreamWait:
    __slots__ = ("_tracker",)

    def __init__(self, tracker: RequestTracker) -> None:
        self._tracker = tracker

    def __enter__(self) -> None:
        self._tracker.upstream_started()

    def __exit__(self, *exc_info: object) -> None:
        self._tracker.upstream_finished()


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
