"""What the request middleware records, and the bounds on every label value.

Shared by the ASGI and WSGI middleware: the metric declarations (prefix, buckets), the
excluded paths, and the label values, each from a bounded set so that no request, however
made up, can create a series of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypedDict

import attrs

from metricsfacade import get_metrics
from metricsfacade.facade import Metrics
from metricsfacade.handles import GaugeChild

logger = logging.getLogger("metricsfacade.web")

#: The ``route`` of a request that matched no route of the application.
UNMATCHED_ROUTE = "unmatched"
#: A label value outside its bounded set: a made-up method, a request label past its limit.
OTHER = "other"
#: The facade's endpoint routes: not requests of the service.
DEFAULT_EXCLUDED_PATHS = ("/metrics", "/health", "/ready")
#: Body sizes in bytes: 100 B to 10 MB.
DEFAULT_SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
#: Label sets whose bound record functions are cached; past it they are looked up per request.
BOUND_CACHE_LIMIT = 10_000


class RecorderOptions(TypedDict, total=False):
    """The keyword arguments of :class:`RequestRecorder`, which the middleware pass on."""

    prefix: str
    duration_buckets: Sequence[float] | None
    size_buckets: Sequence[float]
    group_status: bool
    exclude_paths: Iterable[str]
    request_labels: Iterable[RequestLabel]
    unmatched_route: str


@attrs.frozen
class RequestInfo:
    """The request as a label hook sees it, for ASGI and WSGI alike. ``raw`` is the ASGI
    scope or the WSGI environ."""

    method: str
    path: str
    raw: Any

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name, or None."""
        name = name.lower()
        if "headers" in self.raw and "type" in self.raw:  # an ASGI scope
            wanted = name.encode("latin-1")
            for key, value in self.raw["headers"]:
                if key == wanted:
                    return str(value.decode("latin-1"))
            return None
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = self.raw.get(key)
        return None if value is None else str(value)


@attrs.define
class RequestLabel:
    """A label taken from each request by ``value``, its values bounded: ``allowed`` lists
    them, or else the first ``limit`` distinct values seen are kept. Anything else, None, or
    a hook that raises gives ``other``."""

    name: str
    value: Callable[[RequestInfo], object]
    allowed: Collection[str] | None = None
    limit: int = 20
    other: str = OTHER
    _seen: set[str] = attrs.field(factory=set, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _warned: bool = attrs.field(default=False, init=False)

    def bounded(self, request: RequestInfo) -> str:
        try:
            raw = self.value(request)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning("metricsfacade: label hook %r raised", self.name, exc_info=True)
            return self.other
        if raw is None:
            return self.other
        text = raw if type(raw) is str else str(raw)
        if self.allowed is not None:
            return text if text in self.allowed else self.other
        if text in self._seen:
            return text
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(text)
                return text
        return self.other


class RequestRecorder:
    """Declares the request metrics on a facade and records one finished request.

    ``<prefix>_requests_total`` and ``<prefix>_request_duration_seconds`` (a timer) by
    ``method``, ``route``, ``status``; ``<prefix>_request_size_bytes`` and
    ``<prefix>_response_size_bytes`` by ``method``, ``route``; all four with the request
    labels after those. ``<prefix>_requests_in_progress`` by ``method``.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        prefix: str = "http",
        duration_buckets: Sequence[float] | None = None,
        size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        group_status: bool = False,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        request_labels: Iterable[RequestLabel] = (),
        unmatched_route: str = UNMATCHED_ROUTE,
    ) -> None:
        metrics = metrics if metrics is not None else get_metrics()
        self.request_labels = tuple(request_labels)
        extra = [label.name for label in self.request_labels]
        by_status = ["method", "route", "status", *extra]
        by_route = ["method", "route", *extra]
        self._requests = metrics.counter(
            f"{prefix}_requests_total", "HTTP requests answered", by_status
        )
        self._duration = metrics.timer(
            f"{prefix}_request_duration_seconds",
            "Time from a request's arrival to its response's last byte",
            by_status,
            duration_buckets,
        )
        self._request_size = metrics.histogram(
            f"{prefix}_request_size_bytes", "Request body sizes", by_route, size_buckets
        )
        self._response_size = metrics.histogram(
            f"{prefix}_response_size_bytes", "Response body sizes", by_route, size_buckets
        )
        self._in_progress = metrics.gauge(
            f"{prefix}_requests_in_progress", "HTTP requests being answered", ["method"]
        )
        self.group_status = group_status
        self.unmatched_route = unmatched_route
        paths = [path.rstrip("/") or "/" for path in exclude_paths]
        self._excluded = frozenset(paths)
        self._excluded_prefixes = tuple(path.rstrip("/") + "/" for path in paths)
        self._bound: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}

    def excluded(self, path: str) -> bool:
        """Whether ``path`` is an excluded path or lies under one."""
        return path in self._excluded or path.startswith(self._excluded_prefixes)

    def in_progress(self, method: str) -> GaugeChild:
        return self._in_progress.labels(method)

    def labels_of(self, request: RequestInfo) -> tuple[str, ...]:
        """The request labels' bounded values (empty without request labels)."""
        return tuple(label.bounded(request) for label in self.request_labels)

    def status_label(self, status: int) -> str:
        if not 100 <= status <= 999:
            return OTHER
        return f"{status // 100}xx" if self.group_status else str(status)

    def record(
        self,
        method: str,
        route: str,
        status: str,
        *,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
        extra: tuple[str, ...] = (),
    ) -> None:
        """One finished request. ``method`` must already be bounded (``method_label``)."""
        key = (method, route, status, *extra)
        bound = self._bound.get(key)
        if bound is None:
            bound = (
                self._requests.labels(method, route, status, *extra).inc,
                self._duration.labels(method, route, status, *extra).observe,
                self._request_size.labels(method, route, *extra).observe,
                self._response_size.labels(method, route, *extra).observe,
            )
            if len(self._bound) < BOUND_CACHE_LIMIT:
                self._bound[key] = bound
        inc, observe_duration, observe_request, observe_response = bound
        inc()
        observe_duration(seconds)
        observe_request(request_bytes)
        observe_response(response_bytes)


def method_label(method: str) -> str:
    """The method, or ``other`` for a made-up one (methods are client-chosen text)."""
    return method if method in METHODS else OTHER
