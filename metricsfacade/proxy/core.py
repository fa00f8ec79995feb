"""The MCP stdio forward proxy: bytes relayed unchanged, every message measured.

Two pump threads relay newline-delimited JSON-RPC: client (our stdin) to server, and server
to client (our stdout). Each line is forwarded first and inspected after, so measuring adds
nothing to the relay; only the guards that must answer for the server (rate limit, breaker
open, server down, a late response to a request already answered) inspect a line before it
goes on. Requests are correlated with responses by id in both directions; the time a
request spends with the server is excluded from ``shadowcat_proxy_latency_seconds``.

The server pump only queues what it forwarded; the client pump records it right after
forwarding the next request, while the server works on that one, so with a client waiting
for each response the recording costs it nothing. The watchdog records what is left every
250 ms, so a quiet proxy's metrics are at most that late.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import IO, Any, BinaryIO

from metricsfacade.config import ProxySettings
from metricsfacade.proxy import jsonrpc
from metricsfacade.proxy.guards import CircuitBreaker, RateLimiter
from metricsfacade.proxy.jsonrpc import Message, error_response, parse_line
from metricsfacade.proxy.tape import CLIENT_TO_SERVER, SERVER_TO_CLIENT, TapeRecorder
from metricsfacade.proxy.upstream import Upstream
from metricsfacade.shadowcat import ERROR, OK, TIMEOUT, RequestTracker, ShadowcatMetrics

logger = logging.getLogger("metricsfacade.proxy")
TRANSPORT = "stdio"
REPLAY_ID = "metricsfacade-replay"
MAX_RESTART_BACKOFF_SECS = 5.0
WATCHDOG_INTERVAL_SECS = 0.25


class _Pending:
    __slots__ = ("deadline", "tracker")

    def __init__(self, tracker: RequestTracker, deadline: float) -> None:
        self.tracker = tracker
        self.deadline = deadline


class StdioProxy:
    """Relays between ``client_in``/``client_out`` and the server ``command``."""

    def __init__(
        self,
        command: Sequence[str],
        settings: ProxySettings,
        metrics: ShadowcatMetrics,
        client_in: BinaryIO,
        client_out: BinaryIO,
        *,
        tape: TapeRecorder | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._client_in = client_in
        self._client_out = client_out
        self._tape = tape
        self._name = settings.name
        self._upstream = Upstream(command)
        self._out_lock = threading.Lock()
        self._pending: dict[Any, _Pending] = {}  # client requests awaiting the server
        self._server_requests: dict[Any, RequestTracker] = {}  # server requests awaiting the client
        self._swallow: set[Any] = set()  # ids whose server responses must not reach the client
        #: [line, received, written] forwarded to the client, not yet recorded
        self._from_server: deque[list[Any]] = deque()
        self._recording = threading.RLock()
        self._limiter = RateLimiter(settings.rate_limits) if settings.rate_limits else None
        self._breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_secs,
            lambda state: metrics.circuit_breaker_state(self._name, state),
        )
        self._initialize: dict[str, Any] | None = None  # the client's, replayed on restart
        self._initialized_note: bytes | None = None
        self._server_up = threading.Event()
        self._initialized = threading.Event()
        self._closing = threading.Event()
        self._session: Any = None
        self._exit_code = 0

    @property
    def ready(self) -> bool:
        """The server is running and initialized (what /ready reports)."""
        return self._server_up.is_set() and self._initialized.is_set()

    def run(self) -> int:
        """Relay until the client closes its side (or the server exits, without restart);
        returns the exit status for the proxy process."""
        self._start_server()
        for target, name in (
            (self._watchdog, "proxy-watchdog"),
            (self._run_client, "proxy-client-pump"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()
        try:
            self._closing.wait()
        finally:
            self._shutdown()
        return self._exit_code

    def stop(self) -> None:
        """End ``run()`` (as a closed stdin would)."""
        self._closing.set()

    def _run_client(self) -> None:
        try:
            self._pump_client()
        except Exception:
            logger.exception("metricsfacade proxy: relaying the client's messages failed")
        finally:
            self._closing.set()

    # -- client -> server ---------------------------------------------------------------

    def _pump_client(self) -> None:
        limit = self._settings.max_line_bytes
        read = self._client_in.readline
        while not self._closing.is_set():
            line = read(limit + 1)
            if not line:
                return  # the client closed stdin: the session is over
            started = perf_counter()
            if len(line) > limit:
                self._discard_rest(read, line, limit)
                self._reply(error_response(None, jsonrpc.INVALID_REQUEST, "message too long"))
                self._metrics.upstream_error(self._name, "input_too_long")
                continue
            messages = None
            if self._limiter is not None or not self._server_up.is_set():
                messages = parse_line(line)
                if not self._admit(messages, started):
                    continue
            # Held from forwarding until the request is registered: a response drained by
            # another thread in between would find no request to match.
            with self._recording:
                try:
                    self._upstream.send(line)
                except OSError:
                    messages = messages if messages is not None else parse_line(line)
                    self._refuse(messages, started, "the server is not running")
                    continue
                sent = perf_counter()
                if self._tape is not None:
                    self._tape.record(CLIENT_TO_SERVER, line)
                self._track_from_client(
                    parse_line(line) if messages is None else messages, line, started, sent
                )
                self._drain_from_server()

    def _admit(self, messages: list[Message] | None, started: float) -> bool:
        """Answer for the server when it is down or a request is over its rate limit."""
        if messages is None or len(messages) != 1:
            return self._server_up.is_set()  # not JSON, or a batch: forwarded when possible
        message = messages[0]
        if not self._server_up.is_set():
            if message.kind == "request":
                self._refuse(messages, started, "the server is not available")
            return False
        if (
            message.kind == "request"
            and self._limiter is not None
            and message.method is not None
            and not self._limiter.allow(message.method)
        ):
            self._metrics.rate_limit_exceeded("per_method", TRANSPORT)
            self._answer(message, started, jsonrpc.RATE_LIMITED, "rate limit exceeded")
            return False
        return True

    def _refuse(self, messages: list[Message] | None, started: float, why: str) -> None:
        for message in messages or ():
            if message.kind == "request":
                self._answer(message, started, jsonrpc.UPSTREAM_UNAVAILABLE, why)

    def _answer(self, message: Message, started: float, code: int, text: str) -> None:
        """Answer a request with an error ourselves; it counts as an error request."""
        self._reply(error_response(message.id, code, text))
        tracker = self._metrics.start_request(message.method or "", TRANSPORT, started_at=started)
        tracker.finish(ERROR)

    def _track_from_client(
        self, messages: list[Message] | None, line: bytes, started: float, sent: float
    ) -> None:
        metrics = self._metrics
        if messages is None:
            metrics.upstream_error(self._name, "malformed_input")
            return
        timeout = self._settings.request_timeout_secs
        for message in messages:
            if message.kind == "request":
                tracker = metrics.start_request(
                    message.method or "", TRANSPORT, upstream=self._name, started_at=started
                )
                tracker.request_size(len(line))
                tracker.upstream_started(at=sent)
                self._pending[message.id] = _Pending(tracker, time.monotonic() + timeout)
                if message.method == "initialize":
                    self._on_initialize(line)
            elif message.kind == "notification":
                tracker = metrics.start_request(message.method or "", TRANSPORT, started_at=started)
                tracker.request_size(len(line))
                tracker.finish(OK, at=sent)
                if message.method == "notifications/initialized":
                    self._initialized_note = line
            elif message.kind == "response":
                server_request = self._server_requests.pop(message.id, None)
                if server_request is None:  # its request may still wait in the queue
                    self._drain_from_server()
                    server_request = self._server_requests.pop(message.id, None)
                if server_request is None:
                    metrics.upstream_error(self._name, "unknown_id")
                else:
                    server_request.finish(
                        ERROR if message.is_error else OK, response_size=len(line), at=sent
                    )
            else:
                metrics.upstream_error(self._name, "malformed_input")

    def _on_initialize(self, line: bytes) -> None:
        try:
            self._initialize = json.loads(line)
        except ValueError:
            return
        if self._session is None:
            self._session = self._metrics.session()
            self._session.__enter__()

    # -- server -> client ---------------------------------------------------------------

    def _pump_server(self, server_out: IO[bytes]) -> None:
        limit = self._settings.max_line_bytes
        read = server_out.readline
        while True:
            line = read(limit + 1)
            if not line:
                break
            received = perf_counter()
            if len(line) > limit:
                self._discard_rest(read, line, limit)
                self._metrics.upstream_error(self._name, "output_too_long")
                continue
            messages = None
            if self._swallow:  # a late or internal response must not reach the client
                messages = parse_line(line)
                if messages and len(messages) == 1 and messages[0].id in self._swallow:
                    self._swallowed(messages[0])
                    continue
            # Queued before it reaches the client, whose answer may come back at once.
            entry = [line, received, 0.0]
            self._from_server.append(entry)
            self._reply(line)
            entry[2] = perf_counter()
            if self._tape is not None:
                self._tape.record(SERVER_TO_CLIENT, line)
        self._on_server_exit()

    def _record_from_server(self) -> None:
        """Record what the server pump forwarded, from any thread."""
        with self._recording:
            self._drain_from_server()

    def _drain_from_server(self) -> None:
        """Record what the server pump forwarded; the caller holds ``_recording``."""
        queue = self._from_server
        while True:
            try:
                line, received, written = queue.popleft()
            except IndexError:
                return
            # written is 0.0 while the server pump is still writing it: call it now
            self._track_from_server(parse_line(line), line, received, written or perf_counter())

    def _track_from_server(
        self, messages: list[Message] | None, line: bytes, received: float, written: float
    ) -> None:
        metrics = self._metrics
        if messages is None:
            metrics.upstream_error(self._name, "malformed_output")
            return
        for message in messages:
            if message.kind == "response":
                pending = self._pending.pop(message.id, None)
                if pending is None:
                    metrics.upstream_error(self._name, "unknown_id")
                    continue
                pending.tracker.upstream_finished(at=received)
                pending.tracker.finish(
                    ERROR if message.is_error else OK, response_size=len(line), at=written
                )
                self._breaker.success()
                if pending.tracker.method == "initialize":
                    self._initialized.set()
            elif message.kind == "request":
                tracker = metrics.start_request(
                    message.method or "", TRANSPORT, started_at=received
                )
                tracker.request_size(len(line))
                self._server_requests[message.id] = tracker
            elif message.kind == "notification":
                tracker = metrics.start_request(
                    message.method or "", TRANSPORT, started_at=received
                )
                tracker.request_size(len(line))
                tracker.finish(OK, at=written)
            else:
                metrics.upstream_error(self._name, "malformed_output")

    def _swallowed(self, message: Message) -> None:
        self._swallow.discard(message.id)
        if message.id == REPLAY_ID:
            if message.is_error:
                logger.warning("metricsfacade proxy: the restarted server refused initialize")
            else:
                self._breaker.success()
                self._initialized.set()
                if self._initialized_note is not None:
                    self._send_quietly(self._initialized_note)

    # -- the server's life ----------------------------------------------------------------

    def _start_server(self) -> bool:
        try:
            server_out = self._upstream.spawn()
        except OSError as exc:
            logger.error("metricsfacade proxy: cannot start %s: %s", self._upstream.command, exc)
            self._metrics.upstream_error(self._name, "spawn_failed")
            self._breaker.failure()
            return False
        self._server_up.set()
        threading.Thread(
            target=self._pump_server, args=(server_out,), name="proxy-server-pump", daemon=True
        ).start()
        return True

    def _on_server_exit(self) -> None:
        self._record_from_server()  # match what the server did answer before failing the rest
        self._server_up.clear()
        self._initialized.clear()
        code = self._upstream.wait()
        if self._closing.is_set():
            return
        logger.warning("metricsfacade proxy: the server exited with status %s", code)
        self._metrics.upstream_error(self._name, "exit")
        self._fail_pending("the server exited")
        if not self._settings.restart:
            self._exit_code = code if code > 0 else 1
            self._closing.set()
            self._close_client_side()
            return
        self._breaker.failure()
        threading.Thread(target=self._restart, name="proxy-restart", daemon=True).start()

    def _restart(self) -> None:
        delay = self._settings.restart_backoff_secs
        while not self._closing.is_set():
            wait = max(delay, self._breaker.seconds_until_trial())
            if self._closing.wait(wait):
                return
            if not self._breaker.allows_attempt():
                continue
            if self._start_server():
                self._replay_initialize()
                return
            delay = min(delay * 2, MAX_RESTART_BACKOFF_SECS)

    def _replay_initialize(self) -> None:
        """A restarted server must be initialized again, without the client seeing it."""
        if self._initialize is None:
            return
        replay = dict(self._initialize, id=REPLAY_ID)
        self._swallow.add(REPLAY_ID)
        self._send_quietly(json.dumps(replay).encode() + b"\n")

    def _send_quietly(self, line: bytes) -> None:
        try:
            self._upstream.send(line)
        except OSError:
            logger.debug("metricsfacade proxy: the server went away during a replay")

    def _fail_pending(self, why: str) -> None:
        for key in list(self._pending):
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._reply(error_response(key, jsonrpc.UPSTREAM_UNAVAILABLE, why))
                pending.tracker.finish(ERROR)

    def _watchdog(self) -> None:
        """Answers requests the server left unanswered past request_timeout_secs."""
        while not self._closing.wait(WATCHDOG_INTERVAL_SECS):
            with self._recording:
                self._drain_from_server()  # a queued response is not a timeout
                now = time.monotonic()
                for key, pending in list(self._pending.items()):
                    if pending.deadline <= now and self._pending.pop(key, None) is not None:
                        self._swallow.add(key)  # its late response must not follow our answer
                        self._reply(
                            error_response(key, jsonrpc.UPSTREAM_TIMEOUT, "upstream timed out")
                        )
                        pending.tracker.finish(TIMEOUT)
                        self._metrics.upstream_error(self._name, "timeout")

    # -- plumbing ---------------------------------------------------------------------------

    def _reply(self, line: bytes) -> None:
        with self._out_lock:
            try:
                self._client_out.write(line)
                self._client_out.flush()
            except (OSError, ValueError):
                self._closing.set()  # the client went away

    @staticmethod
    def _discard_rest(read: Any, line: bytes, limit: int) -> None:
        while line and not line.endswith(b"\n"):
            line = read(limit + 1)

    def _close_client_side(self) -> None:
        with self._out_lock, contextlib.suppress(OSError):
            self._client_out.close()

    def _shutdown(self) -> None:
        self._closing.set()
        self._upstream.stop()
        self._record_from_server()
        self._fail_pending("the proxy is shutting down")
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None
        if self._tape is not None:
            self._tape.close()
