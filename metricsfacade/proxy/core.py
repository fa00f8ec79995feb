"""The MCP stdio forward proxy: bytes relayed unchanged, every message measured.

Two pump threads relay newline-delimited JSON-RPC: client (our stdin) to server, and server
to client (our stdout). Each line is forwarded first and inspected after, so measuring adds
nothing to the relay; only the guards that must answer for the server (rate limit, breaker
open, server down, a late response to a request already answered) inspect a line before it
goes on. Requests are correlated with responses by id in both directions; the time a
request spends with the server is excluded from ``shadowcat_proxy_latency_seconds``.

Neither pump records anything: each queues what it relayed (the client pump before writing
to the server, the server pump before writing to the client, so a request is always queued
before its response) and a recorder thread turns the queue into metrics, yielding the GIL
after each message so a pump with a line to relay never waits for bookkeeping. The recorder
also answers requests that outlive ``request_timeout_secs``. Metrics lag the traffic by a few
milliseconds.
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
from metricsfacade.proxy.jsonrpc import (
    Message,
    batch_error_response,
    error_response,
    parse_line,
)
from metricsfacade.proxy.tape import CLIENT_TO_SERVER, SERVER_TO_CLIENT, TapeRecorder
from metricsfacade.proxy.upstream import Upstream
from metricsfacade.shadowcat import CANCELLED, ERROR, OK, TIMEOUT, RequestTracker, ShadowcatMetrics

logger = logging.getLogger("metricsfacade.proxy")
TRANSPORT = "stdio"
REPLAY_ID = "metricsfacade-replay"
MAX_RESTART_BACKOFF_SECS = 5.0
#: Relayed messages waiting for the recorder beyond this are relayed but not recorded.
MAX_UNRECORDED = 100_000
#: How often the recorder looks for new messages when idle, and for expired requests.
RECORDER_POLL_SECS = 0.002
TIMEOUT_CHECK_SECS = 0.25
#: Queue entries: [origin, line, read at, relayed at (0.0 until relayed), parsed messages]
FROM_CLIENT, FROM_SERVER, SERVER_EXIT, NOT_RELAYED = "client", "server", "exit", "none"
NOT_PARSED: Any = object()


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
        #: what the pumps relayed, in order, for the recorder (see the module docstring)
        self._relayed: deque[list[Any]] = deque()
        self._recorder_stop = threading.Event()
        self._unrecorded = 0  # messages relayed while the queue was full
        self._wall_clock = time.time() - perf_counter()  # perf_counter() -> epoch seconds
        self._cancelled: set[Any] = set()  # ids whose late answers are expected, not errors
        self._recorder: threading.Thread | None = None
        self._limiter = RateLimiter(settings.rate_limits) if settings.rate_limits else None
        self._breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_secs,
            lambda state: metrics.circuit_breaker_state(self._name, state),
        )
        self._initialize: dict[str, Any] | None = None  # the client's, replayed on restart
        self._initialized_note: bytes | None = None
        self._server_up = threading.Event()
        self._replaying = threading.Event()  # a restarted server is being initialized
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
        self._recorder = threading.Thread(target=self._record, name="proxy-recorder", daemon=True)
        self._recorder.start()
        threading.Thread(target=self._run_client, name="proxy-client-pump", daemon=True).start()
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
            if self._limiter is not None or not self._available():
                messages = parse_line(line)
                if not self._admit(messages, started):
                    continue
            entry = [FROM_CLIENT, line, started, 0.0, NOT_PARSED if messages is None else messages]
            self._queue(entry)  # queued first: it must precede its response
            try:
                self._upstream.send(line)
            except (OSError, ValueError):  # gone, or its stdin closed at shutdown
                entry[0] = NOT_RELAYED
                entry[3] = started
                self._refuse(
                    messages if messages is not None else parse_line(line),
                    started,
                    "the server is not running",
                )
                continue
            entry[3] = perf_counter()

    def _available(self) -> bool:
        """Running, and not in the middle of being initialized again after a restart."""
        return self._server_up.is_set() and not self._replaying.is_set()

    def _admit(self, messages: list[Message] | None, started: float) -> bool:
        """Answer for the server when it is down or a request is over its rate limit."""
        if not self._available():
            self._refuse(messages, started, "the server is not available")
            return False
        if messages is None or len(messages) != 1:
            return True  # not JSON, or a batch: forwarded as it is
        message = messages[0]
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
        """Answer every request among ``messages`` with an error (a batch with a batch)."""
        requests = [message for message in messages or () if message.kind == "request"]
        if messages is not None and len(messages) > 1 and requests:
            keys = [message.id for message in requests]
            self._reply(batch_error_response(keys, jsonrpc.UPSTREAM_UNAVAILABLE, why))
            for message in requests:
                self._record_answer(message, started)
            return
        for message in requests:
            self._answer(message, started, jsonrpc.UPSTREAM_UNAVAILABLE, why)

    def _answer(self, message: Message, started: float, code: int, text: str) -> None:
        """Answer a request with an error ourselves; it counts as an error request."""
        self._reply(error_response(message.id, code, text))
        self._record_answer(message, started)

    def _record_answer(self, message: Message, started: float) -> None:
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
                self._pending[message.id] = _Pending(tracker, started + timeout)
                if message.method == "initialize":
                    self._on_initialize(line)
            elif message.kind == "notification":
                tracker = metrics.start_request(message.method or "", TRANSPORT, started_at=started)
                tracker.request_size(len(line))
                tracker.finish(OK, at=sent)
                if message.method == "notifications/initialized":
                    self._initialized_note = line
                elif message.cancels is not None:
                    self._cancel(self._pending.pop(message.cancels, None), message.cancels, sent)
            elif message.kind == "response":
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
                if (
                    messages
                    and len(messages) == 1
                    and messages[0].kind == "response"  # a server request may reuse the id
                    and messages[0].id in self._swallow
                ):
                    self._swallowed(messages[0])
                    continue
            # Queued before it reaches the client, whose answer may come back at once.
            entry = [FROM_SERVER, line, received, 0.0, NOT_PARSED if messages is None else messages]
            self._queue(entry)
            self._reply(line)
            entry[3] = perf_counter()
        with contextlib.suppress(OSError):
            server_out.close()  # this server run is over: its pipe goes with it
        self._on_server_exit()

    # -- the recorder -----------------------------------------------------------------------

    def _queue(self, entry: list[Any]) -> None:
        if len(self._relayed) < MAX_UNRECORDED:
            self._relayed.append(entry)
        else:  # the recorder is far behind: relay without recording, and count it
            self._unrecorded += 1

    def _record(self) -> None:
        """Turn the relayed queue into metrics, in order, until stopped and drained."""
        queue = self._relayed
        next_check = time.monotonic() + TIMEOUT_CHECK_SECS
        while True:
            try:
                entry = queue.popleft()
            except IndexError:
                if self._recorder_stop.is_set():
                    return
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + TIMEOUT_CHECK_SECS
                    self._expire_requests()
                    self._report_unrecorded()
                time.sleep(RECORDER_POLL_SECS)
                continue
            while entry[3] == 0.0:  # its pump is still relaying it (maybe blocked on a pipe)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + TIMEOUT_CHECK_SECS
                    self._expire_requests()
                time.sleep(RECORDER_POLL_SECS / 4)
            try:
                self._record_entry(entry)
            except Exception:
                logger.exception("metricsfacade proxy: recording a message failed")
            time.sleep(0)  # hand the GIL to a pump with a line to relay, if there is one

    def _report_unrecorded(self) -> None:
        count, self._unrecorded = self._unrecorded, 0
        if count:
            self._metrics.facade.count_dropped(
                "shadowcat_requests_total",
                "proxy_overloaded",
                f"{count} messages relayed but not recorded: the recorder fell behind",
                count,
            )

    def _record_entry(self, entry: list[Any]) -> None:
        origin, line, read_at, relayed_at, messages = entry
        if origin == FROM_CLIENT:
            if self._tape is not None:  # here, in queue order: a request before its response
                self._tape.record(CLIENT_TO_SERVER, line, self._wall_clock + read_at)
            parsed = parse_line(line) if messages is NOT_PARSED else messages
            self._track_from_client(parsed, line, read_at, relayed_at)
        elif origin == FROM_SERVER:
            if self._tape is not None:
                self._tape.record(SERVER_TO_CLIENT, line, self._wall_clock + read_at)
            parsed = parse_line(line) if messages is NOT_PARSED else messages
            self._track_from_server(parsed, line, read_at, relayed_at)
        elif origin == SERVER_EXIT:
            self._server_exited(line)

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
                    if message.id in self._cancelled:
                        self._cancelled.discard(message.id)  # answered anyway: allowed
                    elif message.id != jsonrpc.NULL_ID:  # null: a reply to malformed input
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
                if message.cancels is not None:
                    request = self._server_requests.pop(message.cancels, None)
                    self._cancel(request, message.cancels, written)
            else:
                metrics.upstream_error(self._name, "malformed_output")

    def _cancel(self, request: _Pending | RequestTracker | None, key: Any, at: float) -> None:
        """A request its sender cancelled: recorded as cancelled, and an answer that still
        comes is relayed without counting as an error."""
        if request is None:
            return
        tracker = request.tracker if isinstance(request, _Pending) else request
        tracker.finish(CANCELLED, at=at)
        if len(self._cancelled) < MAX_UNRECORDED:
            self._cancelled.add(key)

    def _swallowed(self, message: Message) -> None:
        self._swallow.discard(message.id)
        if message.id == REPLAY_ID:
            if message.is_error:
                logger.warning("metricsfacade proxy: the restarted server refused initialize")
            else:  # a success for the breaker is a client request answered, not this
                self._initialized.set()
                if self._initialized_note is not None:
                    self._send_quietly(self._initialized_note)
            self._replaying.clear()

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
        """The server pump saw the server's output end."""
        self._server_up.clear()
        self._initialized.clear()
        code = self._upstream.wait()
        if self._closing.is_set():
            return
        logger.warning("metricsfacade proxy: the server exited with status %s", code)
        # After what it answered, so those are matched before the rest is failed.
        self._relayed.append([SERVER_EXIT, code, 0.0, 1.0, None])
        if self._settings.restart:
            self._breaker.failure()
            threading.Thread(target=self._restart, name="proxy-restart", daemon=True).start()

    def _server_exited(self, code: int) -> None:
        """The recorder's part of an exit: count it, fail what is pending, maybe stop."""
        self._metrics.upstream_error(self._name, "exit")
        self._fail_pending("the server exited")
        if not self._settings.restart:
            self._exit_code = code if code > 0 else 1
            self._closing.set()
            self._close_client_side()

    def _restart(self) -> None:
        delay = self._settings.restart_backoff_secs
        while not self._closing.is_set():
            wait = max(delay, self._breaker.seconds_until_trial())
            if self._closing.wait(wait):
                return
            if not self._breaker.allows_attempt():
                continue
            if self._initialize is not None:
                self._replaying.set()  # before the server is up: no request may overtake it
            if self._start_server():
                self._replay_initialize()
                return
            self._replaying.clear()
            delay = min(delay * 2, MAX_RESTART_BACKOFF_SECS)

    def _replay_initialize(self) -> None:
        """A restarted server must be initialized again, without the client seeing it."""
        if self._initialize is None:
            return
        replay = dict(self._initialize, id=REPLAY_ID)
        self._replaying.set()  # client requests are refused until it is answered
        self._swallow.add(REPLAY_ID)
        self._send_quietly(json.dumps(replay).encode() + b"\n")

    def _send_quietly(self, line: bytes) -> None:
        try:
            self._upstream.send(line)
        except (OSError, ValueError):
            logger.debug("metricsfacade proxy: the server went away during a replay")

    def _fail_pending(self, why: str) -> None:
        for key in list(self._pending):
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._reply(error_response(key, jsonrpc.UPSTREAM_UNAVAILABLE, why))
                pending.tracker.finish(ERROR)

    def _expire_requests(self) -> None:
        """Answer requests the server left unanswered past request_timeout_secs."""
        now = perf_counter()
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[key]
                self._swallow.add(key)  # its late response must not follow our answer
                self._reply(error_response(key, jsonrpc.UPSTREAM_TIMEOUT, "upstream timed out"))
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
        self._recorder_stop.set()
        if self._recorder is not None and self._recorder is not threading.current_thread():
            self._recorder.join(5)  # it records what is queued, then stops
        self._fail_pending("the proxy is shutting down")
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None
        if self._tape is not None:
            self._tape.close()
