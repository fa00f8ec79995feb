"""The HTTP endpoint: ``<path>`` (default /metrics), ``/health`` and ``/ready``.

The routes themselves are ``metricsfacade.web.routes``, shared with the mountable ASGI and
WSGI apps; this module is the server: sockets, TLS, threads.

One thread runs a ``selectors`` loop that accepts connections, does TLS handshakes and reads
request heads without blocking, so an idle or slow client costs a descriptor and a small
buffer, never a thread. A head must arrive within ``HEAD_DEADLINE_SECS`` and fit in
``MAX_HEAD_BYTES`` (else 431); at most ``MAX_CONNECTIONS`` connections are held while their
heads arrive, and at the cap the oldest is closed to admit the new one, so descriptors stay
bounded and a client that sends its head at once gets in. Complete requests go to ``WORKERS``
threads that answer through ``http.server``'s handler (one request per connection) and close
it. Everything runs on daemon threads, so it never blocks an asyncio loop. Errors are logged
and answered with a short status line: no traceback ever reaches a response.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from metricsfacade.config import MetricsConfig
from metricsfacade.errors import EndpointError
from metricsfacade.readiness import ReadinessChecks
from metricsfacade.web.routes import Render, Request, Response, Routes

logger = logging.getLogger("metricsfacade.endpoint")

#: Seconds a worker waits on a client while sending it the response.
REQUEST_TIMEOUT_SECS = 10.0
#: Seconds from accept to a complete request head (TLS handshake included); then it is closed.
HEAD_DEADLINE_SECS = 10.0
#: The largest request head read; a bigger one is answered 431 (414 if the request line is).
MAX_HEAD_BYTES = 64 * 1024
#: Connections held while their heads arrive; at the cap the oldest is closed for a new one.
MAX_CONNECTIONS = 256
#: Threads answering complete requests.
WORKERS = 4
#: Complete requests waiting for a worker; beyond that a new one is closed unanswered.
MAX_QUEUED = 64
_BACKLOG = 1024
_POLL_SECS = 0.2
_ACCEPTS_PER_ROUND = 64


class _Connection:
    __slots__ = ("address", "buffer", "deadline", "handshaking", "scanned", "sock")

    def __init__(self, sock: socket.socket, address: Any, handshaking: bool) -> None:
        self.sock = sock
        self.address = address
        self.deadline = time.monotonic() + HEAD_DEADLINE_SECS
        self.buffer = bytearray()
        self.handshaking = handshaking
        self.scanned = 0


class _Job:
    __slots__ = ("address", "error", "head", "sock")

    def __init__(self, sock: socket.socket, address: Any, head: bytes, error: int = 0) -> None:
        self.sock = sock
        self.address = address
        self.head = head
        self.error = error


def _head_complete(connection: _Connection) -> bool:
    """Whether http.server would answer now: a blank line ends the head, and a request line
    that is not ``METHOD TARGET VERSION`` is answered (or dropped) without headers."""
    buffer = connection.buffer
    newline = buffer.find(b"\n")
    if newline < 0:
        return False
    if len(bytes(buffer[:newline]).split()) != 3:
        return True
    start = max(newline, connection.scanned - 2)
    connection.scanned = len(buffer)
    return buffer.find(b"\n\n", start) >= 0 or buffer.find(b"\n\r\n", start) >= 0


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _Writer(io.BufferedIOBase):
    """Writes straight to the socket, all of it (like socketserver's unbuffered writer)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes


class Endpoint:
    """Serves the exposition and the probes until ``stop()``."""

    def __init__(
        self, config: MetricsConfig, render: Render | None, readiness: ReadinessChecks
    ) -> None:
        self._config = config
        self._render = render
        self._routes = Routes(lambda: config, lambda: self._render, readiness)
        self._listener: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(MAX_QUEUED)
        self._handler = _make_handler(self)

    @property
    def port(self) -> int:
        assert self._listener is not None, "the endpoint is not started"
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._config.tls_cert else "http"
        host = self._config.bind
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        config = self._config
        family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((config.bind, config.port or 0))
            listener.listen(_BACKLOG)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
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
                listener.close()
                raise EndpointError(
                    f"cannot load tls_cert {config.tls_cert!r} / tls_key {config.tls_key!r}: {exc}"
                ) from None
            self._context = context
        self._listener = listener
        self._stopping.clear()
        self._threads = [
            threading.Thread(
                target=self._loop, args=(listener,), name="metricsfacade-endpoint", daemon=True
            )
        ]
        self._threads += [
            threading.Thread(
                target=self._work, name=f"metricsfacade-endpoint-worker-{n}", daemon=True
            )
            for n in range(WORKERS)
        ]
        for thread in self._threads:
            thread.start()
        logger.info("metricsfacade: serving %s%s, /health and /ready", self.url, config.path)

    def stop(self) -> None:
        if self._listener is None:
            return
        self._stopping.set()
        for _ in range(WORKERS):
            try:
                self._jobs.put(None, timeout=1)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._listener.close()
        self._listener = None
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _close(job.sock)

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

    def _loop(self, listener: socket.socket) -> None:
        _Loop(listener, self._context, self._jobs, self._stopping).run()

    # -- the workers: answer complete requests ---------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.sock.settimeout(REQUEST_TIMEOUT_SECS)
                self._handler(job)
            except Exception:
                logger.debug(
                    "metricsfacade endpoint: connection from %s failed", job.address, exc_info=True
                )
            finally:
                with contextlib.suppress(OSError):
                    job.sock.shutdown(socket.SHUT_WR)
                _close(job.sock)


class _Loop:
    """The selector loop: accepts connections, does TLS handshakes, reads request heads."""

    def __init__(
        self,
        listener: socket.socket,
        context: ssl.SSLContext | None,
        jobs: queue.Queue[_Job | None],
        stopping: threading.Event,
    ) -> None:
        self._listener = listener
        self._context = context
        self._jobs = jobs
        self._stopping = stopping
        self._selector = selectors.DefaultSelector()
        # In accept order, which is also deadline order: the first is the one to evict or expire.
        self._held: collections.OrderedDict[int, _Connection] = collections.OrderedDict()

    def run(self) -> None:
        selector, held = self._selector, self._held
        selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                timeout = _POLL_SECS
                if held:
                    first = next(iter(held.values()))
                    timeout = max(0.0, min(timeout, first.deadline - time.monotonic()))
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        self._accept()
                        continue
                    connection = held.get(key.fd)
                    if connection is not None and connection is key.data:
                        self._advance(connection)
                self._expire()
        except Exception:
            logger.exception("metricsfacade endpoint: the connection loop failed")
        finally:
            for connection in list(held.values()):
                self._drop(connection)
            selector.close()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._held:
            first = next(iter(self._held.values()))
            if first.deadline > now:
                return
            logger.debug(
                "metricsfacade endpoint: %s sent no complete request in %ss, closing",
                first.address,
                HEAD_DEADLINE_SECS,
            )
            self._drop(first)

    def _drop(self, connection: _Connection) -> None:
        self._held.pop(connection.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        _close(connection.sock)

    def _dispatch(self, connection: _Connection, error: int = 0) -> None:
        self._held.pop(connection.sock.fileno(), None)
        self._selector.unregister(connection.sock)
        job = _Job(connection.sock, connection.address, bytes(connection.buffer), error)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            logger.debug("metricsfacade endpoint: workers busy, closing %s", job.address)
            _close(job.sock)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up before its turn
                # EMFILE and the like: it stays in the backlog; pause rather than spin.
                logger.debug("metricsfacade endpoint: accept failed: %s", exc)
                time.sleep(_POLL_SECS / 4)
                return
            while len(self._held) >= MAX_CONNECTIONS:
                self._drop(next(iter(self._held.values())))
            sock.setblocking(False)
            if self._context is not None:
                try:
                    sock = self._context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError):
                    _close(sock)
                    continue
            connection = _Connection(sock, address, handshaking=self._context is not None)
            self._held[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)
            if connection.handshaking:
                self._advance(connection)

    def _advance(self, connection: _Connection) -> None:
        """Handshake and read as far as the socket allows without blocking."""
        sock = connection.sock
        events = selectors.EVENT_READ
        try:
            if connection.handshaking:
                assert isinstance(sock, ssl.SSLSocket)
                sock.do_handshake()
                connection.handshaking = False
            while True:
                chunk = sock.recv(MAX_HEAD_BYTES + 1 - len(connection.buffer))
                if not chunk:  # gone (or half-closed) before a complete head: nothing to answer
                    self._drop(connection)
                    return
                connection.buffer += chunk
                if _head_complete(connection):
                    self._dispatch(connection)
                    return
                if len(connection.buffer) > MAX_HEAD_BYTES:
                    too_long = b"\n" not in connection.buffer
                    self._dispatch(connection, 414 if too_long else 431)
                    return
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            pass
        except ssl.SSLWantWriteError:
            events = selectors.EVENT_READ | selectors.EVENT_WRITE
        except (OSError, ValueError):
            self._drop(connection)
            return
        if self._selector.get_key(sock).events != events:
            self._selector.modify(sock, events, connection)


def _make_handler(endpoint: Endpoint) -> type[Any]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "metricsfacade"
        sys_version = ""
        timeout = REQUEST_TIMEOUT_SECS

        def __init__(self, job: _Job) -> None:
            self._job = job
            super().__init__(job.sock, job.address, None)  # type: ignore[arg-type]

        def setup(self) -> None:
            """The head was read by the selector loop; responses go straight to the socket."""
            self.connection = self.request
            self.rfile = io.BytesIO(self._job.head)
            self.wfile = _Writer(self.request)

        def finish(self) -> None:
            self.rfile.close()

        def handle(self) -> None:
            if not self._job.error:
                super().handle()
                return
            # As http.server answers an over-long line: no request line to echo.
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            if self._job.error == 414:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            else:
                self.send_error(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Request head too large"
                )

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
