"""The HTTP endpoint: ``<path>`` (default /metrics), ``/health`` and ``/ready``.

A ThreadingHTTPServer on its own daemon thread, so it never blocks an asyncio loop and a slow
scrape never blocks another. Errors are logged here and answered with a short status line:
no traceback ever reaches a response.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hmac
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metricsfacade.config import MetricsConfig
from metricsfacade.errors import EndpointError
from metricsfacade.readiness import ReadinessChecks

logger = logging.getLogger("metricsfacade.endpoint")

Render = Callable[[str | None], tuple[bytes, str]]
#: Seconds a connection may stay idle before the server drops it (slow or stuck clients).
REQUEST_TIMEOUT_SECS = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 drops connections in scrape bursts

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug(
            "metricsfacade endpoint: connection from %s failed", client_address, exc_info=True
        )


class Endpoint:
    """Serves the exposition and the probes until ``stop()``."""

    def __init__(
        self, config: MetricsConfig, render: Render | None, readiness: ReadinessChecks
    ) -> None:
        self._config = config
        self._render = render
        self._readiness = readiness
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the endpoint is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._config.tls_cert else "http"
        host = self._config.bind
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        config = self._config
        _Server.address_family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
        try:
            server = _Server((config.bind, config.port or 0), _make_handler(self))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EndpointError(
                    f"cannot serve metrics on {config.bind}:{config.port}: the port is already "
                    "in use; set `port` in the metrics config (or METRICSFACADE_PORT) to a free "
                    "port, or 0 to pick one"
                ) from None
            raise EndpointError(
                f"cannot serve metrics on {config.bind}:{config.port}: {exc.strerror or exc}; "
                "check `bind` and `port` in the metrics config"
            ) from None
        if config.tls_cert and config.tls_key:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(config.tls_cert, config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                server.server_close()
                raise EndpointError(
                    f"cannot load tls_cert {config.tls_cert!r} / tls_key {config.tls_key!r}: {exc}"
                ) from None
            # The handshake then happens in the request's thread, not in the accept loop.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="metricsfacade-endpoint",
            daemon=True,
        )
        self._thread.start()
        logger.info("metricsfacade: serving %s%s, /health and /ready", self.url, config.path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- request handling, called from the handler ----------------------------------------

    def respond(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        path = request.path.split("?", 1)[0]
        config = self._config
        if path == "/health":
            return _json(200, {"status": "ok"})
        if path == "/ready":
            failures = self._readiness.failures(config.readiness_timeout_secs)
            if failures:
                return _json(503, {"status": "not ready", "failing": failures})
            return _json(200, {"status": "ready"})
        if path != config.path:
            return _text(404, "not found\n")
        if config.auth_username is not None and not self._authorized(request):
            status, headers, body = _text(401, "authentication required\n")
            headers["WWW-Authenticate"] = 'Basic realm="metrics", charset="UTF-8"'
            return status, headers, body
        if self._render is None:
            return _text(404, "no prometheus backend is configured\n")
        body, content_type = self._render(request.headers.get("Accept"))
        headers = {"Content-Type": content_type}
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return 200, headers, body

    def _authorized(self, request: BaseHTTPRequestHandler) -> bool:
        expected = f"{self._config.auth_username}:{self._config.auth_password}".encode()
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, expected)


def _accepts_gzip(accept_encoding: str) -> bool:
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


def _json(status: int, payload: object) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode() + b"\n"


def _text(status: int, text: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()


def _make_handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "metricsfacade"
        sys_version = ""
        timeout = REQUEST_TIMEOUT_SECS

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _not_allowed(self) -> None:
            status, headers, body = _text(405, "method not allowed\n")
            headers["Allow"] = "GET, HEAD"
            self._send(status, headers, body, send_body=True)

        def __getattr__(self, name: str) -> Any:
            """Any other method (POST, PUT, even made-up ones) gets 405, not http.server's 501."""
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

        def _answer(self, send_body: bool) -> None:
            try:
                status, headers, body = endpoint.respond(self)
            except Exception:
                logger.exception("metricsfacade endpoint: %s %s failed", self.command, self.path)
                status, headers, body = _text(500, "internal error; see the server log\n")
            self._send(status, headers, body, send_body)

        def _send(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metricsfacade endpoint: " + format, *args)

    return Handler
