"""The MCP stdio forward proxy: bytes relayed unchanged, every message measured.

One thread relays newline-delimited JSON-RPC both ways, client (our stdin) to server and
server to client (our stdout), in a ``poll`` loop over non-blocking pipes: a line is
forwarded as soon as it is read, and no peer that stops reading can stall the other
direction. Each client line is parsed before it goes on (rate limits, each member of a
batch; the cap on requests in flight; an id the server still owes an answer for, which the
request reaches the server without); a server line only while the proxy must change or drop
answers (late ones to requests it answered itself, renamed ids, a batch's refusals).
Memory stays bounded: see ``_interest`` for the back-pressure.

Measuring comes after relaying: each relayed line is queued, and the same thread records
the queue (``bookkeeping``: the whole catalog, the tape) once the traffic pauses for a
millisecond, a few messages at a time between looks for new input (under steady traffic,
once 64 wait, it records as much as it relays). On a machine with few CPUs the peer a line
wakes may be waiting for the proxy's own CPU, so even a few microseconds of bookkeeping
between two lines would show in the round trip; metrics lag the traffic by a millisecond.
A single thread also means no lock, and no hand-over of the interpreter lock on the way
through.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import select
import shlex
import signal
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import Any, BinaryIO

from metricsfacade.proxy import jsonrpc
from metricsfacade.proxy.bookkeeping import (
    FROM_CLIENT,
    FROM_PROXY,
    FROM_SERVER,
    NOT_PARSED,
    REFUSED,
    SERVER_EXIT,
    TRANSPORT,
    Bookkeeping,
)
from metricsfacade.proxy.guards import CircuitBreaker, RateLimiter
from metricsfacade.proxy.jsonrpc import (
    Message,
    batch_error_response,
    error_object,
    error_response,
    id_text,
    join_batch,
    parse_line,
    replace_id,
    split_batch,
)
from metricsfacade.proxy.relay import HIGH_WATER_BYTES, RELAYED_AT, LineInput, LineOutput
from metricsfacade.proxy.settings import ProxySettings
from metricsfacade.proxy.tape import TapeRecorder
from metricsfacade.proxy.upstream import Upstream
from metricsfacade.shadowcat import ShadowcatMetrics

logger = logging.getLogger("metricsfacade.proxy")
REPLAY_ID = "metricsfacade-replay"
MAX_RESTART_BACKOFF_SECS = 5.0
#: How long the server gets to answer what it has and exit once the client has hung up ...
SHUTDOWN_GRACE_SECS = 2.0
#: ... or, at most, from a stop signal: MCP clients send SIGKILL 2 s after SIGTERM, and the
#: whole shutdown (this, the server's SIGTERM, the last answers, the tape) must fit before.
SIGNAL_GRACE_SECS = 1.0
#: A server whose output ended gets this long to exit before it is sent SIGTERM.
EXIT_WAIT_SECS = 1.0
#: How long the client gets to read the proxy's last answers (after a signal, at most).
DRAIN_SECS, SIGNAL_DRAIN_SECS = 2.0, 0.25
#: Exit statuses of ``run()`` besides 0 and the server's own (documented in ``proxy --help``).
CANNOT_START = 127
SIGNALLED_BASE = 128
#: Relayed messages waiting to be recorded beyond this are relayed but not recorded.
MAX_UNRECORDED = 100_000
#: Recording waits for a pause this long in the traffic, so that it never holds up a line
#: (on a busy machine a peer may be waiting for this very CPU) ...
RECORD_AFTER_IDLE_MS = 1
#: ... or for this many messages to be waiting, under steady traffic; then it keeps pace.
RECORD_BACKLOG = 64
#: Messages recorded between two looks for new input, once recording has begun.
RECORD_CHUNK = 8
#: Client requests the server may have unanswered at once; beyond, the proxy answers -32000.
MAX_IN_FLIGHT = 10_000
#: Ids remembered for answers the server still owes (timed out, cancelled), at most.
MAX_OWED = 100_000
#: Reading stops while the tape's writer is this far behind (bytes) ...
TAPE_HIGH_WATER = 4 * 1024 * 1024
#: ... and looks again this often.
TAPE_WAIT_MS = 10
#: The prefix of the ids the proxy gives requests that reuse an id the server still owes.
RENAMED_PREFIX = "metricsfacade-id-"
#: ... or the base of those it gives integer ids (below 2**31, for servers that expect int32).
RENAMED_BASE = 2_000_000_000
IN, OUT = select.POLLIN, select.POLLOUT


class StdioProxy:
    """Relays between ``client_in``/``client_out`` (streams with a file descriptor) and
    the server ``command``."""

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
        self._tape = tape
        self._name = settings.name
        self._upstream = Upstream(command)
        self._client_out_stream = client_out
        self._from_client = LineInput(client_in.fileno(), settings.max_line_bytes)
        self._to_client = LineOutput(client_out.fileno())
        self._from_server: LineInput | None = None
        self._to_server: LineOutput | None = None
        self._wake_read, self._wake_write = os.pipe()  # how stop() interrupts poll()
        os.set_blocking(self._wake_write, False)  # a signal handler must never wait on it
        # Relayed, not yet recorded, per destination, in the order read: (number, entry).
        # Recorded in that order, except that a line its reader has not taken yet holds up
        # only its own direction: what went the other way is recorded meanwhile.
        self._up: deque[tuple[int, list[Any]]] = deque()  # to the server
        self._down: deque[tuple[int, list[Any]]] = deque()  # to the client
        self._seq = 0
        self._exits: deque[int] = deque()  # numbers of the server exits queued
        self._refused_bytes = 0  # refused client lines queued (for the tape) toward the client
        self._idle = False  # the last poll found nothing to do
        # Ids (as the server knows them) of the client requests the server still owes an
        # answer: a request reusing one is sent with an id of the proxy's own (renamed).
        self._owed: dict[Any, None] = {}
        self._renamed: dict[Any, Any] = {}  # the proxy's id -> the client's
        self._alias: dict[Any, Any] = {}  # the client's id -> the proxy's, for cancellations
        self._names = 0
        # Server ids whose responses must not reach the client (answered by the proxy).
        self._swallow: dict[Any, None] = {}
        # Refusals of a batch's members, added to the server's answer to the rest: by the
        # server id of each request relayed, the shared group.
        self._held: dict[Any, _Held] = {}
        self._limiter = RateLimiter(settings.rate_limits) if settings.rate_limits else None
        self._breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_reset_secs,
            lambda state: metrics.circuit_breaker_state(self._name, state),
        )
        self._books = Bookkeeping(
            metrics,
            settings.name,
            settings.request_timeout_secs,
            tape=tape,
            on_answered=self._breaker.success,
            on_response=self._owed_nothing,
        )
        # The handshake, watched as it is relayed: replayed to a restarted server.
        self._initialize: dict[str, Any] | None = None
        self._initialize_id: Any = None  # of the client's initialize, until answered
        self._initialized_note: bytes | None = None
        self._server_up = False
        self._replaying = False  # a restarted server is being initialized
        self._initialized = False
        self._restart_at: float | None = None
        self._restart_delay = settings.restart_backoff_secs
        self._stop_requested = False
        self._signal: int | None = None  # the first stop signal received
        self._closed = False  # run() has returned: stop() does nothing
        # When the server's grace ends: the client hung up, or stop() was called.
        self._grace_until: float | None = None
        self._exit_code = 0

    @property
    def ready(self) -> bool:
        """The server is running and initialized (what /ready reports)."""
        return self._server_up and self._initialized

    @property
    def in_flight(self) -> int:
        """Requests waiting for an answer, both ways: the proxy's concurrent units of work."""
        return self._books.in_flight

    def run(self) -> int:
        """Relay until the client closes its side (or the server exits, without restart, or
        cannot start); returns the exit status for the proxy process."""
        try:
            if self._start_server():
                self._relay()
            elif self._settings.restart:  # retried with backoff, as after a crash
                self._schedule_restart(perf_counter())
                self._relay()
            else:
                self._exit_code = CANNOT_START
        finally:
            self._shutdown()
        return self._status()

    def stop(self, signum: int | None = None) -> None:
        """End ``run()`` (as a closed stdin would); callable from any thread and from a
        signal handler. With ``signum`` (a stop signal), the server gets at most
        ``SIGNAL_GRACE_SECS`` and ``run()`` returns 128 + ``signum``."""
        if self._closed:
            return  # the wake pipe is closed; its descriptor may be someone else's now
        if self._signal is None:
            self._signal = signum
        self._stop_requested = True
        with contextlib.suppress(OSError):  # full (many signals): it is awake anyway
            os.write(self._wake_write, b"x")

    def _status(self) -> int:
        """What ended the proxy, first come: the server (its exit status, or it could not
        start), a signal (128 + its number); else 0, the client hung up."""
        if self._exit_code:
            return self._exit_code
        return SIGNALLED_BASE + self._signal if self._signal is not None else 0

    # -- the loop ---------------------------------------------------------------------------

    def _relay(self) -> None:
        poller = select.poll()
        watching: dict[int, int] = {}
        while not self._finished():
            wanted = self._interest()
            if wanted != watching:
                for fd in watching.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd, mask in wanted.items():
                    poller.register(fd, mask)
                watching = wanted
            events = poller.poll(self._poll_timeout_ms())
            lines = 0
            for fd, _ in events:
                lines += self._on_ready(fd)
            if self._to_client.broken:
                self._begin_stopping()  # the client went away (a flush or a write found out)
            now = perf_counter()
            self._on_timers(now)
            self._idle = not events
            if self._idle:
                self._record(RECORD_CHUNK)
            elif len(self._up) + len(self._down) >= RECORD_BACKLOG:
                self._record(max(1, lines))  # under steady load: keep up with what comes

    def _interest(self) -> dict[int, int]:
        """What to wait for: input unless its destination is backed up, output if pending.

        Back-pressure, so that memory stays bounded: the server is not read while 1 MiB
        waits for the client; the client is not read while 1 MiB waits for the server, or
        1 MiB of the proxy's own answers (and refused lines kept for the tape) waits for the
        client; neither is read while the tape's writer is 4 MiB behind."""
        wanted = {self._wake_read: IN}
        to_server, to_client = self._to_server, self._to_client
        tape_ok = self._tape is None or self._tape.backlog < TAPE_HIGH_WATER
        reading_client = self._grace_until is None and not self._from_client.at_eof and tape_ok
        if (
            reading_client
            and (to_server is None or to_server.pending < HIGH_WATER_BYTES)
            and to_client.own_pending + self._refused_bytes < HIGH_WATER_BYTES
        ):
            wanted[self._from_client.fd] = IN
        if self._from_server is not None and to_client.pending < HIGH_WATER_BYTES and tape_ok:
            wanted[self._from_server.fd] = IN
        if to_client.pending and not to_client.broken:
            wanted[to_client.fd] = OUT
        if to_server is not None and to_server.pending and not to_server.broken:
            wanted[to_server.fd] = OUT
        return wanted

    def _poll_timeout_ms(self) -> int | None:
        """Until the next deadline; when relayed lines wait to be recorded, until the
        traffic pauses (or at once, when recording has begun or fallen behind)."""
        if self._next_recorded(take=False) is not None:
            if self._idle or len(self._up) + len(self._down) >= RECORD_BACKLOG:
                return 0
            return RECORD_AFTER_IDLE_MS
        if self._tape is not None and self._tape.backlog >= TAPE_HIGH_WATER:
            return TAPE_WAIT_MS
        request_deadline = self._books.next_deadline()
        deadlines = [] if request_deadline is None else [request_deadline]
        if self._restart_at is not None:
            deadlines.append(self._restart_at)
        if self._grace_until is not None:
            deadlines.append(self._grace_until)
        if not deadlines:
            return None
        return max(0, math.ceil((min(deadlines) - perf_counter()) * 1000))

    def _on_ready(self, fd: int) -> int:
        """Handle one ready descriptor; returns how many lines it relayed."""
        if fd == self._wake_read:
            os.read(self._wake_read, 64)
            if self._stop_requested:
                self._stop_requested = False
                self._on_stop()
            return 0
        if fd == self._from_client.fd:
            return self._read_client()
        if self._from_server is not None and fd == self._from_server.fd:
            return self._read_server(self._from_server)
        if fd == self._to_client.fd:
            self._to_client.flush()
        elif self._to_server is not None and fd == self._to_server.fd:
            self._to_server.flush()
        return 0

    def _finished(self) -> bool:
        return self._grace_until is not None and self._from_server is None

    def _on_timers(self, now: float) -> None:
        deadline = self._books.next_deadline()
        if deadline is not None and deadline <= now:
            self._record(len(self._up) + len(self._down))  # relayed answers are no timeout
            for key in self._books.expire(now):
                self._swallow[key] = None  # its late response must not follow our answer
                self._flush_held(key)
                client_key = self._renamed.get(key, key)
                if self._alias.get(client_key) == key:
                    del self._alias[client_key]
                answer = error_response(client_key, jsonrpc.UPSTREAM_TIMEOUT, "upstream timed out")
                self._reply(answer)
            self._forget_owed()
        if self._restart_at is not None and now >= self._restart_at:
            self._restart(now)
        if self._grace_until is not None:
            if self._to_server is not None and not self._to_server.pending:
                self._to_server.release()  # all it was sent is written: it may exit
                self._to_server = None
                self._upstream.close_stdin()
            if now >= self._grace_until:
                self._server_gone(now, wait_secs=0.0)  # its grace is over: SIGTERM

    def _on_stop(self) -> None:
        if self._signal is None:
            self._begin_stopping()
            return
        logger.info(
            "metricsfacade proxy: %s: answering the requests in flight, then stopping the server",
            signal.Signals(self._signal).name,
        )
        self._begin_stopping(SIGNAL_GRACE_SECS)

    def _begin_stopping(self, grace_secs: float = SHUTDOWN_GRACE_SECS) -> None:
        """Stop taking requests; the server has ``grace_secs`` to answer and exit (a
        later, shorter grace, such as a signal's, cuts it short)."""
        until = perf_counter() + grace_secs
        if self._grace_until is None or until < self._grace_until:
            self._grace_until = until

    # -- client -> server ---------------------------------------------------------------

    def _read_client(self) -> int:
        source = self._from_client
        lines = source.read()
        read_at = perf_counter()
        for line in lines:
            self._relay_client_line(line, read_at)
        for head in source.dropped:
            self._too_long(head, read_at)
        source.dropped.clear()
        if source.at_eof:
            self._begin_stopping()  # the client closed stdin: the session is over
        return len(lines)

    def _too_long(self, head: bytes, read_at: float) -> None:
        """A line over ``max_line_bytes``, dropped: answered with the id of the request it
        starts with when its first bytes give the id and method (else with a null id), and
        counted under its method as well."""
        self._metrics.upstream_error(self._name, "input_too_long")
        message = jsonrpc.head_message(head)
        key = message.id if message.kind == "request" else None
        self._reply(error_response(key, jsonrpc.INVALID_REQUEST, "message too long"))
        if message.method is not None:
            self._books.record_refused(message, read_at)

    def _relay_client_line(self, line: bytes, read_at: float) -> None:
        messages = parse_line(line)
        if not self._available():
            self._enqueue_refused(line, read_at)  # before our answer, for the tape's order
            self._refuse(messages, read_at, "the server is not available")
            return
        if messages:
            admitted = self._admit(line, messages, read_at)
            if admitted is None:
                return
            line, messages = admitted
            if len(self._owed) > MAX_OWED:
                self._forget_owed()
            if not self._initialized_note:
                self._watch_client_handshake(messages, line)
        entry = [FROM_CLIENT, line, read_at, 0.0, messages]
        self._enqueue(entry, self._up)
        assert self._to_server is not None  # it is available
        self._to_server.write(line, entry)

    def _watch_client_handshake(self, messages: list[Message], line: bytes) -> None:
        """Keep the client's initialize and initialized notification for a restarted server."""
        for message in messages:
            if message.kind == "request" and message.method == "initialize":
                with contextlib.suppress(ValueError):
                    self._initialize = json.loads(line)
                self._initialize_id = message.id
            elif message.kind == "notification" and message.method == "notifications/initialized":
                self._initialized_note = line

    def _available(self) -> bool:
        """Running, and not in the middle of being initialized again after a restart."""
        return self._server_up and not self._replaying and self._to_server is not None

    def _admit(
        self, line: bytes, messages: list[Message], read_at: float
    ) -> tuple[bytes, list[Message]] | None:
        """Apply the rate limits and the cap on requests in flight to each request (a
        batch's members one by one), and give a request whose id the server still owes an
        answer for an id of the proxy's own. Returns the line to relay and its messages (as
        the server will see them), or None when nothing is left to relay."""
        if len(messages) == 1 and line[:1] == b"{":  # the usual case: one message
            message = messages[0]
            if message.kind == "request":
                if message.id in self._owed:
                    self._catch_up()  # its answer may be relayed but not recorded yet
                if message.id not in self._owed:
                    why = self._allowed(message)
                    if why is None:
                        self._owed[message.id] = None
                        return line, messages
                    self._enqueue_refused(line, read_at)
                    self._answer(message, read_at, *why)
                    return None
            elif message.cancels is None or message.cancels not in self._alias:
                return line, messages
        return self._admit_each(line, messages, read_at)

    def _allowed(self, message: Message) -> tuple[int, str] | None:
        """Why the proxy must refuse this request (a code and a message), or None."""
        if self._books.awaiting_server >= MAX_IN_FLIGHT:
            return jsonrpc.UPSTREAM_UNAVAILABLE, "too many requests in flight"
        if (
            self._limiter is not None
            and message.method is not None
            and not self._limiter.allow(message.method)
        ):
            self._metrics.rate_limit_exceeded("per_method", TRANSPORT)
            return jsonrpc.RATE_LIMITED, "rate limit exceeded"
        return None

    def _admit_each(
        self, line: bytes, messages: list[Message], read_at: float
    ) -> tuple[bytes, list[Message]] | None:
        if any(m.kind == "request" and m.id in self._owed for m in messages):
            self._catch_up()  # their answers may be relayed but not recorded yet
        batch = line.lstrip()[:1] == b"["
        texts = split_batch(line) if batch else [line.decode("utf-8", "replace").removesuffix("\n")]
        if texts is None or len(texts) != len(messages):  # cannot happen: parsed as JSON
            return line, messages
        kept: list[str] = []
        kept_messages: list[Message] = []
        refused: list[str] = []  # the refused members, for the tape
        answers: list[str] = []
        relayed_requests: list[Any] = []
        changed = False
        for original, raw in zip(messages, texts, strict=True):
            message, text = original, raw
            if message.kind == "request":
                why = self._allowed(message)
                if why is not None:
                    refused.append(text)
                    answers.append(error_object(message.id, *why))
                    self._books.record_refused(message, read_at)
                    changed = True
                    continue
                if message.id in self._owed:  # reused while the server owes it: rename
                    name = self._new_name(message.id)
                    self._renamed[name] = message.id
                    self._alias[message.id] = name
                    text = replace_id(text, id_text(name)) or text  # it has an id: replaced
                    message, changed = message._replace(id=name), True
                self._owed[message.id] = None
                relayed_requests.append(message.id)
            elif message.cancels is not None and message.cancels in self._alias:
                name = self._alias[message.cancels]
                cancel = _replace_request_id(text, id_text(name))
                if cancel is not None:
                    text, message, changed = cancel, message._replace(cancels=name), True
            kept.append(text)
            kept_messages.append(message)
        if not changed:
            return line, messages
        if refused:
            self._enqueue_refused(join_batch(refused) if batch else line, read_at)
        if not kept:
            self._reply(join_batch(answers) if batch else answers[0].encode() + b"\n")
            return None
        if answers:
            if relayed_requests:  # added to the server's answer to the rest of the batch
                held = _Held(answers, relayed_requests)
                for key in relayed_requests:
                    self._held[key] = held
            else:  # nothing of the rest will be answered: the refusals are the answer
                self._reply(join_batch(answers))
        new_line = join_batch(kept) if batch else kept[0].encode() + b"\n"
        return new_line, kept_messages

    def _catch_up(self) -> None:
        """Record what was relayed, so that ids the server answered are free again."""
        self._record(len(self._up) + len(self._down))

    def _new_name(self, key: Any) -> Any:
        """An id for a request whose own id the server still owes an answer for: an integer
        for an integer (servers may expect the type they were given), else a string."""
        while True:
            self._names += 1
            name: Any = RENAMED_BASE + self._names if key.__class__ is int else None
            if name is None:
                name = f"{RENAMED_PREFIX}{self._names}"
            if name not in self._owed:
                return name

    def _refuse(self, messages: list[Message] | None, read_at: float, why: str) -> None:
        """Answer every request among ``messages`` with an error (a batch with a batch)."""
        requests = [message for message in messages or () if message.kind == "request"]
        if messages is not None and len(messages) > 1 and requests:
            keys = [message.id for message in requests]
            self._reply(batch_error_response(keys, jsonrpc.UPSTREAM_UNAVAILABLE, why))
            for message in requests:
                self._books.record_refused(message, read_at)
            return
        for message in requests:
            self._answer(message, read_at, jsonrpc.UPSTREAM_UNAVAILABLE, why)

    def _answer(self, message: Message, read_at: float, code: int, text: str) -> None:
        """Answer a request with an error ourselves; it counts as an error request."""
        self._reply(error_response(message.id, code, text))
        self._books.record_refused(message, read_at)

    # -- server -> client ---------------------------------------------------------------

    def _read_server(self, source: LineInput) -> int:
        lines = source.read()
        read_at = perf_counter()
        for line in lines:
            self._relay_server_line(line, read_at)
        for _ in source.dropped:
            self._metrics.upstream_error(self._name, "output_too_long")
        source.dropped.clear()
        if source.at_eof:
            self._server_gone(read_at, EXIT_WAIT_SECS)
        return len(lines)

    def _relay_server_line(self, line: bytes, read_at: float) -> None:
        messages = NOT_PARSED
        held: list[_Held] = []
        if self._swallow or self._renamed or self._held or self._initialize_id is not None:
            messages = parse_line(line)
            if messages and (self._swallow or self._renamed or self._held):
                fixed = self._fix_responses(line, messages, held)
                if fixed is None:  # only late answers to requests the proxy answered itself
                    for group in held:
                        self._reply(join_batch(group.answers))
                    return
                line, messages = fixed
            if messages and self._initialize_id is not None:
                self._watch_server_handshake(messages)
        entry = [FROM_SERVER, line, read_at, 0.0, messages]
        self._enqueue(entry, self._down)
        self._to_client.write(line, entry)
        for group in held:  # the server answered a batch's requests otherwise than as one
            self._reply(join_batch(group.answers))

    def _fix_responses(
        self, line: bytes, messages: list[Message], held: list[_Held]
    ) -> tuple[bytes, list[Message]] | None:
        """Drop the late answers to requests the proxy answered itself, give back their
        own ids to requests the proxy renamed, and add the refusals of a batch's members to
        the server's answer to the rest; the messages keep the ids the server used."""
        dropped: set[int] = set()
        restored: dict[int, Any] = {}
        groups: list[_Held] = []
        for index, message in enumerate(messages):
            if message.kind != "response":
                continue  # a server request may reuse the id
            key = message.id
            if key in self._held:
                group = self._held[key]
                for member in group.keys:
                    self._held.pop(member, None)
                groups.append(group)
            if key in self._swallow:
                self._swallowed(message)
                dropped.add(index)
            elif key in self._renamed:
                restored[index] = self._renamed.pop(key)
                if self._alias.get(restored[index]) == key:
                    del self._alias[restored[index]]
        if not dropped and not restored and not groups:
            return line, messages
        batch = line.lstrip()[:1] == b"["
        texts = split_batch(line) if batch else [line.decode("utf-8", "replace").removesuffix("\n")]
        if texts is None or len(texts) != len(messages):  # cannot happen: parsed as JSON
            held.extend(groups)
            return line, messages
        kept: list[str] = []
        kept_messages: list[Message] = []
        for index, (message, text) in enumerate(zip(messages, texts, strict=True)):
            if index in dropped:
                continue
            if index in restored:
                kept.append(replace_id(text, id_text(restored[index])) or text)
            else:
                kept.append(text)
            kept_messages.append(message)
        if not batch:
            held.extend(groups)  # a single response: the refusals follow, as a batch
            return (kept[0].encode() + b"\n", kept_messages) if kept else None
        for group in groups:
            kept.extend(group.answers)
        if not kept:
            return None
        return join_batch(kept), kept_messages

    def _watch_server_handshake(self, messages: list[Message]) -> None:
        """The server answered the client's initialize: it is ready (what /ready says)."""
        for message in messages:
            if message.kind == "response" and message.id == self._initialize_id:
                self._initialize_id = None
                self._initialized = not message.is_error

    def _swallowed(self, message: Message) -> None:
        self._swallow.pop(message.id, None)
        self._owed.pop(message.id, None)
        self._renamed.pop(message.id, None)
        if message.id != REPLAY_ID:
            return
        if message.is_error:
            logger.warning("metricsfacade proxy: the restarted server refused initialize")
        else:  # a success for the breaker is a client request answered, not this
            self._initialized = True
            if self._initialized_note is not None and self._to_server is not None:
                self._to_server.write(self._initialized_note)
        self._replaying = False

    # -- recording ------------------------------------------------------------------------

    def _enqueue(self, entry: list[Any], queue: deque[tuple[int, list[Any]]]) -> None:
        if len(self._up) + len(self._down) < MAX_UNRECORDED:
            self._seq += 1
            queue.append((self._seq, entry))
        else:  # recording is far behind: relay without recording, and count it
            self._metrics.facade.count_dropped(
                "shadowcat_requests_total",
                "proxy_overloaded",
                "a message was relayed but not recorded: recording fell behind",
            )

    def _enqueue_refused(self, line: bytes, read_at: float) -> None:
        """A client line (or the members of a batch) the proxy answered itself: taped, in
        turn with the answers to the client (nothing else records it)."""
        if self._tape is not None:
            self._refused_bytes += len(line)
            self._enqueue([REFUSED, line, read_at, read_at, None], self._down)

    def _next_recorded(self, *, take: bool = True) -> list[Any] | None:
        """The next entry to record (taken off its queue unless ``take`` is false): the
        first read, once relayed; if it is still being written, the first of the other
        direction, once relayed (but never past a server exit still to record)."""
        up, down = self._up, self._down
        if up and (not down or up[0][0] < down[0][0]):
            first, other = up, down
        else:
            first, other = down, up
        if not first:
            return None
        if first[0][1][RELAYED_AT]:
            chosen = first
        elif (
            other
            and other[0][1][RELAYED_AT]
            and (other is down or not self._exits or other[0][0] < self._exits[0])
        ):
            chosen = other
        else:
            return None
        if not take:
            return chosen[0][1]
        return self._take(chosen)

    def _take(self, queue: deque[tuple[int, list[Any]]]) -> list[Any]:
        entry = queue.popleft()[1]
        if entry[0] == SERVER_EXIT:
            self._exits.popleft()
        elif entry[0] == REFUSED:
            self._refused_bytes -= len(entry[1])
        return entry

    def _record(self, budget: int) -> None:
        """Record up to ``budget`` relayed messages, in the order they were relayed."""
        for _ in range(budget):
            entry = self._next_recorded()
            if entry is None:
                return  # empty, or the lines first read are still being written
            self._record_entry(entry)

    def _record_entry(self, entry: list[Any]) -> None:
        try:
            if entry[0] == SERVER_EXIT:
                self._server_exited(entry[1])
            else:
                self._books.record(entry)
        except Exception:
            logger.exception("metricsfacade proxy: recording a message failed")

    def _fail_pending(self, why: str) -> None:
        for key in self._books.fail_pending():
            self._flush_held(key)
            client_key = self._renamed.pop(key, key)
            self._reply(error_response(client_key, jsonrpc.UPSTREAM_UNAVAILABLE, why))
        for key in list(self._held):
            self._flush_held(key)

    def _flush_held(self, key: Any) -> None:
        """The server will not answer a batch member (it timed out, or the server is
        gone): the refusals of the batch's other members are sent on their own."""
        group = self._held.pop(key, None)
        if group is None:
            return
        for member in group.keys:
            self._held.pop(member, None)
        self._reply(join_batch(group.answers))

    def _owed_nothing(self, key: Any) -> None:
        """The server answered this id (recorded): a request may use it again as it is."""
        self._owed.pop(key, None)

    def _forget_owed(self) -> None:
        """Forget the oldest ids still owed (answers that may never come: timed out or
        cancelled) beyond ``MAX_OWED``, so that a server that never answers cannot make
        the proxy remember ids without end."""
        for table in (self._owed, self._swallow):
            if len(table) > MAX_OWED:
                for key in list(itertools.islice(table, len(table) - MAX_OWED)):
                    table.pop(key, None)
                    self._renamed.pop(key, None)

    # -- the server's life ----------------------------------------------------------------

    def _start_server(self) -> bool:
        try:
            stdin_fd, stdout_fd = self._upstream.spawn()
        except OSError as exc:
            retry = "retrying with backoff" if self._settings.restart else "exiting"
            logger.error(
                "metricsfacade proxy: cannot start the server (%s): %s; %s",
                shlex.join(self._upstream.command),
                exc,
                retry,
            )
            self._metrics.upstream_error(self._name, "spawn_failed")
            self._breaker.failure()
            return False
        self._to_server = LineOutput(stdin_fd)
        self._from_server = LineInput(stdout_fd, self._settings.max_line_bytes)
        self._server_up = True
        return True

    def _server_gone(self, now: float, wait_secs: float) -> None:
        """The server's output ended (or it outstayed the shutdown grace): reap it, giving
        it ``wait_secs`` to exit before SIGTERM, then SIGKILL."""
        if self._from_server is None:
            return
        if self._to_server is not None:
            self._to_server.release()  # lines it never read count as sent; they fail below
        self._from_server = self._to_server = None
        self._server_up = self._initialized = self._replaying = False
        # A new server owes nothing; the requests in flight are failed when recorded.
        self._owed.clear()
        self._swallow.clear()
        self._alias.clear()
        stopping = self._grace_until is not None
        code = self._upstream.stop(wait_secs)
        if stopping:
            return
        logger.warning("metricsfacade proxy: the server exited with status %s", code)
        # After what it answered, so those are matched before the rest is failed.
        self._seq += 1
        self._down.append((self._seq, [SERVER_EXIT, code, now, now, None]))
        self._exits.append(self._seq)
        if self._settings.restart:
            self._breaker.failure()
            self._restart_delay = self._settings.restart_backoff_secs
            self._schedule_restart(now)

    def _server_exited(self, code: int | None) -> None:
        """The recorded part of an exit: count it, fail what is pending, maybe stop."""
        self._metrics.upstream_error(self._name, "exit")
        self._fail_pending("the server exited")
        if not self._settings.restart:
            self._exit_code = code if code is not None and code > 0 else 1
            self._begin_stopping()

    def _schedule_restart(self, now: float) -> None:
        self._restart_at = now + max(self._restart_delay, self._breaker.seconds_until_trial())

    def _restart(self, now: float) -> None:
        if self._grace_until is not None:
            self._restart_at = None
        elif not self._breaker.allows_attempt():
            self._schedule_restart(now)
        elif self._start_server():
            self._restart_at = None
            self._replay_initialize()
        else:
            self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_BACKOFF_SECS)
            self._schedule_restart(now)

    def _replay_initialize(self) -> None:
        """A restarted server must be initialized again, without the client seeing it;
        client requests are refused until it is answered."""
        if self._initialize is None or self._to_server is None:
            return
        self._replaying = True
        self._swallow[REPLAY_ID] = None
        self._to_server.write(json.dumps(dict(self._initialize, id=REPLAY_ID)).encode() + b"\n")

    # -- plumbing ---------------------------------------------------------------------------

    def _reply(self, line: bytes) -> None:
        """Answer the client ourselves (taped in turn with what was relayed)."""
        now = perf_counter()
        self._to_client.write(line, own=True)
        if self._tape is not None:
            self._enqueue([FROM_PROXY, line, now, now, None], self._down)

    def _shutdown(self) -> None:
        """Reap the server, record what was relayed, answer what is left, close up."""
        self._begin_stopping()
        self._server_gone(perf_counter(), wait_secs=0.0)
        self._record_all()
        self._fail_pending("the proxy is shutting down")
        self._record_all()
        self._drain_client_output(DRAIN_SECS if self._signal is None else SIGNAL_DRAIN_SECS)
        if self._exit_code:  # the server is gone for good: so is the client's input
            with contextlib.suppress(OSError):
                self._client_out_stream.close()
        self._books.close()
        if self._tape is not None:
            self._tape.close()
        self._closed = True  # before the descriptors go: see stop()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _record_all(self) -> None:
        now = perf_counter()
        up, down = self._up, self._down
        while up or down:
            queue = up if up and (not down or up[0][0] < down[0][0]) else down
            entry = self._take(queue)
            entry[RELAYED_AT] = entry[RELAYED_AT] or now  # never written: the reader left
            self._record_entry(entry)

    def _drain_client_output(self, secs: float) -> None:
        """Give a client still reading the last answers, for ``secs`` at most."""
        output = self._to_client
        deadline = perf_counter() + secs
        poller = select.poll()
        poller.register(output.fd, OUT)
        while output.pending and not output.broken:
            remaining = deadline - perf_counter()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                break
            output.flush()
        output.release()


class _Held:
    """The proxy's refusals of some members of a batch, waiting to join the server's
    answer to the others (``keys``: the server ids of the requests relayed)."""

    __slots__ = ("answers", "keys")

    def __init__(self, answers: list[str], keys: list[Any]) -> None:
        self.answers = answers
        self.keys = keys


def _replace_request_id(text: str, new_id: str) -> str | None:
    """A ``notifications/cancelled`` with its ``params.requestId`` replaced by ``new_id``."""
    for key, start, end in jsonrpc.member_spans(text):
        if key == "params":
            params = replace_id(text[start:end], new_id, "requestId")
            return None if params is None else text[:start] + params + text[end:]
    return None
