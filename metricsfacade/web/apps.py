"""Mountable apps serving the facade's routes (the exposition, /health, /ready) from the
service's own server: ``MetricsASGIApp`` for Starlette, FastAPI and any ASGI server,
``MetricsWSGIApp`` for Flask, Django and any WSGI server.

Mounted under a prefix, they serve the exposition at the prefix itself, at ``<prefix>/`` and
at ``<prefix><path>``, and the probes at ``<prefix>/health`` and ``<prefix>/ready``. They
answer byte for byte as the facade's own endpoint does (both use ``routes.Routes``), and
follow the facade through re-configurations: ``auth_*``, ``path`` and the backends in force
at each request apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from metricsfacade.config import MetricsConfig
from metricsfacade.readiness import ReadinessChecks
from metricsfacade.web.protocol import Environ, Receive, Scope, Send, StartResponse
from metricsfacade.web.routes import Render, Request, Routes

if TYPE_CHECKING:
    from metricsfacade.facade import Metrics


def facade_routes(metrics: Metrics, readiness: ReadinessChecks) -> Routes:
    """The routes of ``metrics`` as configured at each request (defaults while unconfigured)."""
    unconfigured = MetricsConfig()

    def config() -> MetricsConfig:
        return metrics.config or unconfigured

    def render() -> Render | None:
        backend = metrics.pull_backend()
        return backend.render if backend is not None else None

    return Routes(config, render, readiness, serve_root=True)


class MetricsASGIApp:
    """An ASGI app: ``app.mount("/metrics", m.asgi_app())``. It needs an asyncio loop (the
    exposition is rendered in a worker thread; coroutine readiness checks run on the loop).
    Websockets are refused; lifespan events are acknowledged, so it also runs on its own."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _acknowledge_lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):  # Starlette keeps the prefix in "path"
            path = path[len(root_path) :]
        headers = {
            name: value
            for name, value in scope["headers"]
            if name in (b"accept", b"accept-encoding", b"authorization")
        }
        method: str = scope["method"]
        response = await self._routes.respond_async(
            Request(
                method=method,
                path=path,
                accept=_header(headers, b"accept"),
                accept_encoding=_header(headers, b"accept-encoding") or "",
                authorization=_header(headers, b"authorization") or "",
            )
        )
        raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
        ]
        raw_headers.append((b"content-length", str(len(response.body)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        body = b"" if method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})


class MetricsWSGIApp:
    """A WSGI app: ``DispatcherMiddleware(app, {"/metrics": m.wsgi_app()})`` (werkzeug), or
    any WSGI server. A /ready with slow checks holds its worker until they end or time out."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method: str = environ["REQUEST_METHOD"]
        response = self._routes.respond(
            Request(
                method=method,
                path=environ.get("PATH_INFO", ""),
                accept=environ.get("HTTP_ACCEPT"),
                accept_encoding=environ.get("HTTP_ACCEPT_ENCODING", ""),
                authorization=environ.get("HTTP_AUTHORIZATION", ""),
            )
        )
        headers = [*response.headers.items(), ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [] if method == "HEAD" else [response.body]


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


async def _acknowledge_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
