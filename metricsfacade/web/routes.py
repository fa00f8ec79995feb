"""The exposition and probe routes, independent of any server.

The threaded endpoint, the ASGI app and the WSGI app all answer through ``Routes``, so the
same request gets the same status, headers and bytes from each: routing, basic auth,
content negotiation, gzip and readiness live here once.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import json
import logging
from collections.abc import Callable

import attrs

from metricsfacade.config import MetricsConfig
from metricsfacade.readiness import ReadinessChecks

logger = logging.getLogger("metricsfacade.endpoint")

Render = Callable[[str | None], tuple[bytes, str]]
#: The methods every route answers; any other gets 405.
ALLOWED_METHODS = ("GET", "HEAD")


@attrs.frozen
class Request:
    """What the routes read from a request: the method, the path (no query string, relative
    to where the routes are mounted) and three headers."""

    method: str
    path: str
    accept: str | None = None
    accept_encoding: str = ""
    authorization: str = ""


@attrs.frozen
class Response:
    """A complete answer. ``body`` is the full body even for HEAD: servers send its length
    and leave it out."""

    status: int
    headers: dict[str, str]
    body: bytes


class Routes:
    """``<path>`` (the exposition), ``/health`` and ``/ready``.

    ``config`` and ``render`` are called per request, so apps built on a facade follow its
    re-configurations. ``serve_root`` also serves the exposition at ``/`` (and the empty
    path): what an app mounted under ``/metrics`` receives.
    """

    def __init__(
        self,
        config: Callable[[], MetricsConfig],
        render: Callable[[], Render | None],
        readiness: ReadinessChecks,
        *,
        serve_root: bool = False,
    ) -> None:
        self._config = config
        self._render = render
        self._readiness = readiness
        self._serve_root = serve_root

    def respond(self, request: Request) -> Response:
        """The answer, computed in the calling thread (readiness checks in their own)."""
        try:
            config = self._config()
            if self._is_ready_probe(request):
                return _ready(self._readiness.failures(config.readiness_timeout_secs))
            return self._answer(request, config)
        except Exception:
            return _failed(request)

    async def respond_async(self, request: Request) -> Response:
        """The answer for an asyncio server: the exposition is rendered in a worker thread
        (a large one takes milliseconds) and coroutine readiness checks run on this loop."""
        try:
            config = self._config()
            if self._is_ready_probe(request):
                timeout = config.readiness_timeout_secs
                return _ready(await self._readiness.failures_async(timeout))
            if request.path == "/health" or request.method not in ALLOWED_METHODS:
                return self._answer(request, config)
            return await asyncio.to_thread(self._answer, request, config)
        except Exception:
            return _failed(request)

    def _is_ready_probe(self, request: Request) -> bool:
        return request.path == "/ready" and request.method in ALLOWED_METHODS

    def _answer(self, request: Request, config: MetricsConfig) -> Response:
        """Every route but a /ready that passes the method check."""
        if request.method not in ALLOWED_METHODS:
            response = _text(405, "method not allowed\n")
            response.headers["Allow"] = ", ".join(ALLOWED_METHODS)
            return response
        path = request.path
        if path == "/health":
            return _json(200, {"status": "ok"})
        if path != config.path and not (self._serve_root and path in ("", "/")):
            return _text(404, "not found\n")
        if config.auth_username is not None and not _authorized(request, config):
            response = _text(401, "authentication required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="metrics", charset="UTF-8"'
            return response
        render = self._render()
        if render is None:
            return _text(404, "no prometheus backend is configured\n")
        body, content_type = render(request.accept)
        headers = {"Content-Type": content_type}
        if accepts_gzip(request.accept_encoding):
            # mtime=0: the same exposition gives the same bytes, whichever server sends it.
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Response(200, headers, body)


def _authorized(request: Request, config: MetricsConfig) -> bool:
    expected = f"{config.auth_username}:{config.auth_password}".encode()
    scheme, _, encoded = request.authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, expected)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when the client accepts gzip with a non-zero quality; an explicit ``gzip`` entry
    overrides ``*`` (so ``*, gzip;q=0`` means no)."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        params = params.strip().lower()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        qualities[coding.strip().lower()] = quality
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


def _ready(failures: dict[str, str]) -> Response:
    if failures:
        return _json(503, {"status": "not ready", "failing": failures})
    return _json(200, {"status": "ready"})


def _failed(request: Request) -> Response:
    """No traceback ever reaches a response: it goes to the log."""
    logger.exception("metricsfacade endpoint: %s %s failed", request.method, request.path)
    return _text(500, "internal error; see the server log\n")


def _json(status: int, payload: object) -> Response:
    body = json.dumps(payload).encode() + b"\n"
    return Response(status, {"Content-Type": "application/json"}, body)


def _text(status: int, text: str) -> Response:
    return Response(status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode())
