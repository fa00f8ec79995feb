"""What the proxy relayed, turned into the ``shadowcat_*`` metrics and the tape.

The relay queues an entry per line it relayed; this records them in that order. Requests
are matched with their responses by id in both directions (the client's requests with the
server's responses, and the server's requests, such as sampling, with the client's); the
time a request spends with the server is excluded from ``shadowcat_proxy_latency_seconds``.
Cancelled requests are recorded as cancelled, and requests left unanswered expire.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, time
from typing import Any

from metricsfacade.proxy import jsonrpc
from metricsfacade.proxy.jsonrpc import Message, parse_line
from metricsfacade.proxy.tape import (
    CLIENT_TO_SERVER,
    PROXY_TO_CLIENT,
    SERVER_TO_CLIENT,
    TapeRecorder,
)
from metricsfacade.shadowcat import CANCELLED, ERROR, OK, TIMEOUT, RequestTracker, ShadowcatMetrics

TRANSPORT = "stdio"
#: An entry: [origin, line, read at, relayed at (0.0 until relayed), parsed messages]
FROM_CLIENT, FROM_SERVER, FROM_PROXY, SERVER_EXIT = "client", "server", "proxy", "exit"
#: A client line the proxy answered itself (counted by ``record_refused``): taped only.
REFUSED = "refused"
#: The messages of an entry whose line the relay did not need to parse.
NOT_PARSED: Any = object()
#: Ids remembered for late answers, at most.
MAX_LATE = 100_000


class _Pending:
    __slots__ = ("deadline", "tracker")

    def __init__(self, tracker: RequestTracker, deadline: float) -> None:
        self.tracker = tracker
        self.deadline = deadline


class Bookkeeping:
    """Records relayed entries for one upstream. ``on_answered`` hears of each request
    the server answered (the circuit breaker's success), ``on_response`` of the id of each
    response from the server."""

    def __init__(
        self,
        metrics: ShadowcatMetrics,
        upstream: str,
        request_timeout_secs: float,
        *,
        tape: TapeRecorder | None = None,
        on_answered: Callable[[], None] = lambda: None,
        on_response: Callable[[Any], None] = lambda key: None,
    ) -> None:
        self._metrics = metrics
        self._name = upstream
        self._timeout = request_timeout_secs
        self._tape = tape
        self._on_answered = on_answered
        self._on_response = on_response
        self._pending: dict[Any, _Pending] = {}  # client requests awaiting the server
        self._server_requests: dict[Any, _Pending] = {}  # server requests awaiting the client
        # Ids whose late answers are expected, not errors; per direction, as each side
        # numbers its own requests.
        self._late_from_server: set[Any] = set()
        self._late_from_client: set[Any] = set()
        self._wall_clock = time() - perf_counter()  # perf_counter() -> epoch seconds
        self._session: Any = None

    def record(self, entry: list[Any]) -> None:
        """Record one relayed line (or one of the proxy's own answers, for the tape)."""
        origin, line, read_at, relayed_at, messages = entry
        if origin == FROM_CLIENT:
            self._tape_line(CLIENT_TO_SERVER, line, read_at)
            parsed = parse_line(line) if messages is NOT_PARSED else messages
            self._track_from_client(parsed, line, read_at, relayed_at)
        elif origin == FROM_SERVER:
            self._tape_line(SERVER_TO_CLIENT, line, read_at)
            parsed = parse_line(line) if messages is NOT_PARSED else messages
            self._track_from_server(parsed, line, read_at, relayed_at)
        elif origin == FROM_PROXY:
            self._tape_line(PROXY_TO_CLIENT, line, read_at)
        elif origin == REFUSED:
            self._tape_line(CLIENT_TO_SERVER, line, read_at)

    def record_refused(self, message: Message, read_at: float) -> None:
        """A request the proxy answered with an error itself."""
        tracker = self._metrics.start_request(message.method or "", TRANSPORT, started_at=read_at)
        tracker.finish(ERROR)

    @property
    def in_flight(self) -> int:
        """Requests waiting for an answer: the client's for the server and the server's
        for the client (a plain read: safe from another thread)."""
        return len(self._pending) + len(self._server_requests)

    @property
    def awaiting_server(self) -> int:
        """Client requests the server has not answered yet (recorded ones)."""
        return len(self._pending)

    def next_deadline(self) -> float | None:
        """When the oldest request waiting for an answer expires (None: none waits).
        Requests come in order and share one timeout, so the first is the oldest."""
        deadlines = [
            requests[next(iter(requests))].deadline
            for requests in (self._pending, self._server_requests)
            if requests
        ]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[Any]:
        """Expire what waited past ``request_timeout_secs``; returns the ids of the client
        requests among them, for the proxy to answer. A server request the client leaves
        unanswered is only recorded as a timeout: the proxy answers nothing in the
        client's name, and the server keeps its own timeout."""
        expired = []
        for key, pending in self._take_expired(self._pending, now):
            pending.tracker.finish(TIMEOUT)
            self._metrics.upstream_error(self._name, "timeout")
            expired.append(key)
        for key, request in self._take_expired(self._server_requests, now):
            request.tracker.finish(TIMEOUT)
            self._expect_late(self._late_from_client, key)
        return expired

    @staticmethod
    def _take_expired(requests: dict[Any, _Pending], now: float) -> list[tuple[Any, _Pending]]:
        taken = []
        while requests:
            key = next(iter(requests))
            if requests[key].deadline > now:
                break  # the rest came later
            taken.append((key, requests.pop(key)))
        return taken

    def fail_pending(self) -> list[Any]:
        """The server will not answer (it exited, or the proxy stops): every client request
        waiting for it is an error; returns their ids, for the proxy to answer."""
        keys = list(self._pending)
        for pending in self._pending.values():
            pending.tracker.finish(ERROR)
        self._pending.clear()
        return keys

    def close(self) -> None:
        """The session, if one began, ends."""
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def _tape_line(self, direction: str, line: bytes, read_at: float) -> None:
        if self._tape is not None:
            self._tape.record(direction, line, self._wall_clock + read_at)

    def _track_from_client(
        self, messages: list[Message] | None, line: bytes, read_at: float, sent: float
    ) -> None:
        metrics = self._metrics
        if messages is None:
            metrics.upstream_error(self._name, "malformed_input")
            return
        for message, size in zip(messages, _shares(line, messages), strict=True):
            if message.kind == "request":
                tracker = metrics.start_request(
                    message.method or "", TRANSPORT, upstream=self._name, started_at=read_at
                )
                tracker.request_size(size)
                tracker.upstream_started(at=sent)
                # from when the server had it all: requests queued behind a server that is
                # not reading do not time out for its sake
                reused = self._pending.pop(message.id, None)
                if reused is not None:  # the client reused a waiting id: that one is lost
                    reused.tracker.finish(ERROR)
                self._pending[message.id] = _Pending(tracker, sent + self._timeout)
                if message.method == "initialize" and self._session is None:
                    self._session = metrics.session()
                    self._session.__enter__()
            elif message.kind == "notification":
                self._notification(message, size, read_at, sent)
                if message.cancels is not None:
                    request = self._pending.pop(message.cancels, None)
                    self._cancel(request, message.cancels, sent, self._late_from_server)
            elif message.kind == "response":
                server_request = self._server_requests.pop(message.id, None)
                if server_request is not None:
                    server_request.tracker.finish(
                        ERROR if message.is_error else OK, response_size=size, at=sent
                    )
                elif message.id in self._late_from_client:
                    self._late_from_client.discard(message.id)
                else:
                    metrics.upstream_error(self._name, "unknown_id")
            else:
                metrics.upstream_error(self._name, "malformed_input")

    def _track_from_server(
        self, messages: list[Message] | None, line: bytes, read_at: float, written: float
    ) -> None:
        metrics = self._metrics
        if messages is None:
            metrics.upstream_error(self._name, "malformed_output")
            return
        for message, size in zip(messages, _shares(line, messages), strict=True):
            if message.kind == "response":
                self._on_response(message.id)  # the server owes this id nothing more
                pending = self._pending.pop(message.id, None)
                if pending is None:
                    if message.id in self._late_from_server:
                        self._late_from_server.discard(message.id)  # answered anyway: allowed
                    elif message.id != jsonrpc.NULL_ID:  # null: a reply to malformed input
                        metrics.upstream_error(self._name, "unknown_id")
                    continue
                pending.tracker.upstream_finished(at=read_at)
                pending.tracker.finish(
                    ERROR if message.is_error else OK, response_size=size, at=written
                )
                self._on_answered()
            elif message.kind == "request":
                tracker = metrics.start_request(message.method or "", TRANSPORT, started_at=read_at)
                tracker.request_size(size)
                self._server_requests[message.id] = _Pending(tracker, read_at + self._timeout)
            elif message.kind == "notification":
                self._notification(message, size, read_at, written)
                if message.cancels is not None:
                    request = self._server_requests.pop(message.cancels, None)
                    self._cancel(request, message.cancels, written, self._late_from_client)
            else:
                metrics.upstream_error(self._name, "malformed_output")

    def _notification(self, message: Message, size: int, read_at: float, at: float) -> None:
        tracker = self._metrics.start_request(message.method or "", TRANSPORT, started_at=read_at)
        tracker.request_size(size)
        tracker.finish(OK, at=at)

    def _cancel(self, request: _Pending | None, key: Any, at: float, late: set[Any]) -> None:
        """A request its sender cancelled: recorded as cancelled, and an answer that still
        comes is relayed without counting as an error."""
        if request is None:
            return
        request.tracker.finish(CANCELLED, at=at)
        self._expect_late(late, key)

    @staticmethod
    def _expect_late(late: set[Any], key: Any) -> None:
        if len(late) < MAX_LATE:
            late.add(key)


def _shares(line: bytes, messages: list[Message]) -> list[int]:
    """Each message's size: a batch's bytes shared evenly among its messages, the bytes
    left over from the division one each to the first, so the sizes add up to the line."""
    share, left_over = divmod(len(line), len(messages) or 1)
    return [share + 1] * left_over + [share] * (len(messages) - left_over)
