"""Request metrics for any WSGI application (Flask, Django, anything PEP 3333).

``app.wsgi_app = WSGIMetricsMiddleware(app.wsgi_app, metrics=m)`` in Flask;
``application = WSGIMetricsMiddleware(get_wsgi_application(), metrics=m)`` in Django.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from metricsfacade.facade import Metrics
from metricsfacade.web.protocol import Environ, ExcInfo, StartResponse, WSGIApp
from metricsfacade.web.recorder import (
    RecorderOptions,
    RequestInfo,
    RequestRecorder,
    method_label,
)
from metricsfacade.web.templates import watch_flask, wsgi_route

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("metricsfacade.web")


class WSGIMetricsMiddleware:
    """Records every request through the facade (so to every configured backend).

    A request is recorded when the server has taken the response's last chunk (the body
    iterable is exhausted or closed), so a streamed body is timed to its end. An exception,
    from the call or from the body, is counted as status 500 and re-raised unchanged. See
    ``RequestRecorder`` for the metrics and ``templates`` for how ``route`` is found.
    """

    def __init__(
        self, app: WSGIApp, metrics: Metrics | None = None, **options: Unpack[RecorderOptions]
    ) -> None:
        """``options``: those of :class:`~metricsfacade.web.recorder.RequestRecorder`."""
        self.app = app
        self.recorder = RequestRecorder(metrics, **options)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if self.recorder.excluded(path):
            return self.app(environ, start_response)
        watch_flask()
        exchange = _Exchange(self.recorder, environ, path)
        try:
            body = self.app(environ, exchange.start_response(start_response))
        except BaseException:
            exchange.finish(500)
            raise
        return _CountedBody(body, exchange)


class _Exchange:
    """One request's state: the status and bytes the app gave, recorded once."""

    __slots__ = (
        "done",
        "environ",
        "extra",
        "in_progress",
        "method",
        "recorder",
        "sent",
        "start",
        "status",
    )

    def __init__(self, recorder: RequestRecorder, environ: Environ, path: str) -> None:
        self.recorder = recorder
        self.environ = environ
        self.method = method_label(environ.get("REQUEST_METHOD", ""))
        self.extra = (
            recorder.labels_of(RequestInfo(environ.get("REQUEST_METHOD", ""), path, environ))
            if recorder.request_labels
            else ()
        )
        self.status = 0
        self.sent = 0
        self.done = False
        self.in_progress = recorder.in_progress(self.method)
        self.in_progress.inc()
        self.start = time.perf_counter()

    def start_response(self, start_response: StartResponse) -> StartResponse:
        def counting_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            self.status = _status_code(status)
            write = start_response(status, headers, exc_info)

            def counting_write(data: bytes) -> object:  # the legacy write() callable
                self.sent += len(data)
                return write(data)

            return counting_write

        return counting_start_response

    def finish(self, status: int) -> None:
        """Record the request once; recording problems are logged, never raised."""
        if self.done:
            return
        self.done = True
        seconds = time.perf_counter() - self.start
        self.in_progress.dec()
        try:
            recorder = self.recorder
            recorder.record(
                self.method,
                wsgi_route(self.environ) or recorder.unmatched_route,
                recorder.status_label(status),
                seconds=seconds,
                request_bytes=_content_length(self.environ),
                response_bytes=self.sent,
                extra=self.extra,
            )
        except Exception:
            logger.exception("metricsfacade: recording a request failed")


class _CountedBody:
    """The app's body iterable, counted chunk by chunk; the request is recorded when it is
    exhausted, fails, or is closed by the server (PEP 3333 requires ``close()``)."""

    def __init__(self, body: Iterable[bytes], exchange: _Exchange) -> None:
        self._body = body
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        try:
            for chunk in self._body:
                exchange.sent += len(chunk)
                yield chunk
        except BaseException:
            exchange.finish(500)
            raise
        exchange.finish(exchange.status or 500)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException:
            self._exchange.finish(500)
            raise
        self._exchange.finish(self._exchange.status or 500)


def _status_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 0


def _content_length(environ: Environ) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0
