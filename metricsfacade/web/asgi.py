"""Request metrics for any ASGI application (Starlette, FastAPI, Django's ASGI handler).

``app.add_middleware(ASGIMetricsMiddleware, metrics=m)`` in Starlette and FastAPI, or
``ASGIMetricsMiddleware(app, metrics=m)`` around any ASGI app. Websocket and lifespan
traffic passes through untouched and uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from metricsfacade.facade import Metrics
from metricsfacade.web.protocol import ASGIApp, Message, Receive, Scope, Send
from metricsfacade.web.recorder import (
    RecorderOptions,
    RequestInfo,
    RequestRecorder,
    method_label,
)
from metricsfacade.web.templates import asgi_route

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("metricsfacade.web")


class ASGIMetricsMiddleware:
    """Records every HTTP request through the facade (so to every configured backend).

    A request is recorded when its response's last byte is handed to the server (so a
    streaming response is timed to its end, and background tasks are not), or when the app
    ends without finishing one: an exception is counted as status 500 and re-raised
    unchanged; a cancelled request (the client went away) as 499. See ``RequestRecorder``
    for the metrics and ``templates`` for how ``route`` is found.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics | None = None, **options: Unpack[RecorderOptions]
    ) -> None:
        """``options``: those of :class:`~metricsfacade.web.recorder.RequestRecorder`."""
        self.app = app
        self.recorder = RequestRecorder(metrics, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.recorder.excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        await _Exchange(self.recorder, scope).run(self.app, receive, send)


class _Exchange:
    """One request's state between the app's calls of ``receive`` and ``send``."""

    __slots__ = (
        "disconnected",
        "done",
        "extra",
        "in_progress",
        "method",
        "path",
        "received",
        "recorder",
        "request_bytes",
        "root_path",
        "scope",
        "sent",
        "start",
        "status",
    )

    def __init__(self, recorder: RequestRecorder, scope: Scope) -> None:
        self.recorder = recorder
        self.scope = scope
        self.method: str = scope["method"]
        # As they arrived: a Starlette Mount changes root_path in the scope.
        self.path: str = scope["path"]
        self.root_path: str = scope.get("root_path", "")
        self.extra = (
            recorder.labels_of(RequestInfo(self.method, self.path, scope))
            if recorder.request_labels
            else ()
        )
        self.request_bytes = _content_length(scope["headers"])
        self.received = 0
        self.sent = 0
        self.status = 0
        self.done = False
        self.disconnected = False
        self.in_progress = recorder.in_progress(method_label(self.method))
        self.start = 0.0

    async def run(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        self.in_progress.inc()
        self.start = time.perf_counter()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            elif message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                self.sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self.finish(self.status)
            elif kind == "http.response.start":
                self.status = message["status"]
            elif kind == "http.response.pathsend":  # a file sent by the server itself
                self.finish(self.status)
            await send(message)

        try:
            await app(self.scope, counting_receive, counting_send)
        except asyncio.CancelledError:
            self.finish(499)
            raise
        except BaseException:
            self.finish(500)
            raise
        self.finish(self.status or (499 if self.disconnected else 500))

    def finish(self, status: int) -> None:
        """Record the request once; recording problems are logged, never raised."""
        if self.done:
            return
        self.done = True
        seconds = time.perf_counter() - self.start
        self.in_progress.dec()
        try:
            recorder = self.recorder
            received = self.request_bytes if self.request_bytes is not None else self.received
            route = asgi_route(self.scope, self.method, self.path, self.root_path)
            recorder.record(
                method_label(self.method),
                route or recorder.unmatched_route,
                recorder.status_label(status),
                seconds=seconds,
                request_bytes=received,
                response_bytes=self.sent,
                extra=self.extra,
            )
        except Exception:
            logger.exception("metricsfacade: recording a request failed")


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None
