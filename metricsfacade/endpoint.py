"""The HTTP endpoint: ``<path>`` (default /metrics), ``/health`` and ``/ready``.

The routes themselves are ``metricsfacade.web.routes``, shared with the mountable ASGI and
WSGI apps; this module is the server: sockets, TLS, threads.

A ThreadingHTTPServer on its own daemon thread, so it never blocks an asyncio loop and a slow
scrape never blocks another. Errors are logged and answered with a short status line:
no traceback ever reaches a response.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metricsfacade.config import MetricsConfig
from metricsfacade.errors import EndpointError
from metricsfacade.readiness import ReadinessChecks
from metricsfacade.web.routes import Render, Request, Response, Routes

logger = logging.getLogger("metricsfacade.endpoint")

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
        self._routes = Routes(lambda: config, lambda: self._render, readiness)
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

    def respond(self, request: BaseHTTPRequestHandler) -> Response:
        """The shared routes' answer to a request from the handler."""
        headers = request.headers
        return self._routes.respond(
            Request(
                method=request.command,
                path=request.path.split("?", 1)[0],
                accept=headers.get("Accept"),
                accept_encoding=headers.get("Accept-Encoding", ""),
                authorization=headers.get("Authorization", ""),
            )
        )


def _make_handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "metricsfacade"
        sys_version = ""
        timeout = REQUEST_TIMEOUT_SECS

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def __getattr__(self, name: str) -> Any:
            """Every other method (POST, PUT, even made-up ones) goes to the routes, which
            answer 405 rather than http.server's 501."""
            if name.startswith("do_"):
                return self._answer
            raise AttributeError(name)

        def _answer(self, send_body: bool = True) -> None:
            response = endpoint.respond(self)
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if send_body:
                self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metricsfacade endpoint: " + format, *args)

    return Handler
