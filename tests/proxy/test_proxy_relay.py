"""Unit and property tests of the proxy's non-blocking line I/O (``proxy.relay``) and of
what it records (``proxy.bookkeeping``), on real OS pipes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metricsfacade as mf
from metricsfacade.proxy.bookkeeping import (
    FROM_CLIENT,
    FROM_PROXY,
    FROM_SERVER,
    NOT_PARSED,
    Bookkeeping,
)
from metricsfacade.proxy.jsonrpc import parse_line
from metricsfacade.proxy.relay import DROPPED_HEAD_BYTES, RELAYED_AT, LineInput, LineOutput
from metricsfacade.proxy.tape import TapeRecorder
from metricsfacade.shadowcat import ShadowcatMetrics
from metricsfacade.testing import MetricsMock

LIMIT = 64
REQUESTS = "shadowcat_requests_total"
DURATION = "shadowcat_request_duration_seconds"
REQUEST_SIZE = "shadowcat_request_size_bytes"
RESPONSE_SIZE = "shadowcat_response_size_bytes"
LATENCY = "shadowcat_proxy_latency_seconds"
UPSTREAM_ERRORS = "shadowcat_upstream_errors_total"
UPSTREAM = "upstream-a"
TIMEOUT_SECS = 5.0


# -- helpers ---------------------------------------------------------------------------------


class Pipe:
    """An OS pipe whose ends are closed once, by the test or after it."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self._open = {self.read_fd, self.write_fd}

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    opened = Pipe()
    try:
        yield opened
    finally:
        opened.close_all()


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def read_available(line_input: LineInput) -> list[bytes]:
    """Everything the pipe holds now, as ``LineInput.read`` cuts it (one os.read a call)."""
    lines: list[bytes] = []
    while readable(line_input.fd):
        lines += line_input.read()
    return lines


def read_to_eof(line_input: LineInput) -> list[bytes]:
    lines: list[bytes] = []
    for _ in range(1000):
        if line_input.at_eof:
            return lines
        lines += line_input.read()
    raise AssertionError("LineInput never reached end of input")


def new_entry(line: bytes) -> list[Any]:
    return [FROM_SERVER, line, time.perf_counter(), 0.0, NOT_PARSED]


def is_nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


# -- LineInput -------------------------------------------------------------------------------

line_bodies = st.one_of(
    st.binary(min_size=LIMIT - 2, max_size=LIMIT + 1),  # where the off-by-ones live
    st.binary(max_size=80),
    st.binary(max_size=300),
).map(lambda body: body.replace(b"\n", b"."))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(line_bodies, max_size=20),
    final=line_bodies,
    data=st.data(),
)
def test_line_input_yields_the_short_lines_in_order_however_they_are_chunked(
    lines: list[bytes], final: bytes, data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines) + final
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=30)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = [line + b"\n" for line in lines if len(line) + 1 <= LIMIT]
    too_long = [line for line in lines if len(line) + 1 > LIMIT]

    read_fd, write_fd = os.pipe()
    try:
        line_input = LineInput(read_fd, LIMIT)
        got: list[bytes] = []
        for chunk in chunks:
            if chunk:
                os.write(write_fd, chunk)
                got += read_available(line_input)
        # every terminated line comes out without waiting for the end of input
        assert got == expected
        assert not line_input.at_eof
        os.close(write_fd)
        write_fd = -1
        at_end = read_to_eof(line_input)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)

    if final and len(final) + 1 <= LIMIT:
        assert at_end == [final]  # as it is: no newline added
    else:
        assert at_end == []
        too_long += [final] if final else []
    assert line_input.at_eof
    # each dropped line leaves its head: at least what the limit let in
    assert len(line_input.dropped) == len(too_long)
    for head, line in zip(line_input.dropped, too_long, strict=True):
        assert line.startswith(head)
        assert len(head) >= min(LIMIT, DROPPED_HEAD_BYTES)


def test_line_input_boundary_of_the_limit(pipe: Pipe) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    line_input = LineInput(read_fd, LIMIT)
    fits = b"a" * (LIMIT - 1) + b"\n"  # exactly the limit, newline included
    over = b"b" * LIMIT + b"\n"
    for data in (fits, over):  # one line a read: the fast path
        os.write(write_fd, data)
        assert line_input.read() == ([fits] if data is fits else [])
    assert len(line_input.dropped) == 1
    os.write(write_fd, over + fits + over + fits)  # several lines a read
    assert line_input.read() == [fits, fits]
    assert len(line_input.dropped) == 3


@pytest.mark.parametrize("pieces", [1, 3])
def test_line_input_last_line_at_eof_boundary(pieces: int) -> None:
    """An unterminated last line is held to the same rule: it must fit with a newline."""
    for size, expected in ((LIMIT - 1, [b"c" * (LIMIT - 1)]), (LIMIT, [])):
        read_fd, write_fd = os.pipe()
        try:
            line_input = LineInput(read_fd, LIMIT)
            last = b"c" * size
            step = -(-size // pieces)
            for start in range(0, size, step):
                os.write(write_fd, last[start : start + step])
                assert line_input.read() == []
            os.close(write_fd)
            write_fd = -1
            assert read_to_eof(line_input) == expected
            assert len(line_input.dropped) == (0 if expected else 1)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)


def test_line_input_long_line_in_small_pieces_is_dropped_once(pipe: Pipe) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    line_input = LineInput(read_fd, LIMIT)
    long_line = bytes(range(33, 123)) * 6  # 540 bytes, no newline
    assert b"\n" not in long_line
    pieces = [long_line[i : i + 7] for i in range(0, len(long_line), 7)]
    for piece in pieces:
        os.write(write_fd, piece)
        assert line_input.read() == []
        assert len(line_input.dropped) <= 1
    assert len(line_input.dropped) == 1  # known too long before its end arrives
    # its end, with the start of the next line in the same read
    os.write(write_fd, b"tail\nnext-")
    assert line_input.read() == []
    os.write(write_fd, b"line\n")
    assert line_input.read() == [b"next-line\n"]
    os.write(write_fd, b"another\n")
    assert line_input.read() == [b"another\n"]
    assert len(line_input.dropped) == 1
    pipe.close(write_fd)
    assert read_to_eof(line_input) == []
    assert len(line_input.dropped) == 1


@pytest.mark.parametrize("piece", [3000, 10_000, 27_001])
def test_line_input_keeps_the_first_bytes_of_a_dropped_line(pipe: Pipe, piece: int) -> None:
    """Enough of a line over the limit to find the id and method of the request it starts;
    no more, however long the line and however it arrives (27,001 bytes: in one read)."""
    line_input = LineInput(pipe.read_fd, 10_000)
    long_line = bytes(range(33, 123)) * 300 + b"\n"  # 27,001 bytes; a pipe holds 64 KiB
    for start in range(0, len(long_line), piece):
        os.write(pipe.write_fd, long_line[start : start + piece])
        assert read_available(line_input) == []
    os.write(pipe.write_fd, b"ok\n")
    assert read_available(line_input) == [b"ok\n"]
    assert line_input.dropped == [long_line[:DROPPED_HEAD_BYTES]]


def test_line_input_too_long_last_line_at_eof_is_not_returned(pipe: Pipe) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    line_input = LineInput(read_fd, LIMIT)
    os.write(write_fd, b"ok\n" + b"z" * 200)
    assert line_input.read() == [b"ok\n"]
    pipe.close(write_fd)
    assert read_to_eof(line_input) == []
    assert len(line_input.dropped) == 1


# -- LineOutput ------------------------------------------------------------------------------


def test_line_output_does_not_block_and_stamps_once_drained(pipe: Pipe) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    output = LineOutput(write_fd)
    lines = [
        b"a" * 200_000 + b"\n",
        b"b" * 100_000 + b"\n",
        b'{"short":1}\n',
        bytes(range(256)).replace(b"\n", b"") * 100 + b"\n",
    ]
    entries = [new_entry(line) for line in lines]
    started = time.perf_counter()
    for line, entry in zip(lines, entries, strict=True):
        output.write(line, entry)
    assert time.perf_counter() - started < 0.5  # nobody reads: it returned anyway
    assert 0 < output.pending < sum(map(len, lines))
    assert [entry[RELAYED_AT] for entry in entries] == [0.0] * len(entries)
    output.flush()  # the pipe is still full: nothing changes
    assert [entry[RELAYED_AT] for entry in entries] == [0.0] * len(entries)

    expected = b"".join(lines)
    received = bytearray()

    def reader() -> None:
        while len(received) < len(expected):
            chunk = os.read(read_fd, 65536)
            if not chunk:
                return
            received.extend(chunk)

    drained_from = time.perf_counter()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    give_up = time.monotonic() + 10
    while output.pending and time.monotonic() < give_up:
        select.select([], [write_fd], [], 0.1)  # as the relay's poll loop would
        output.flush()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert output.pending == 0
    assert not output.broken
    assert bytes(received) == expected
    stamps = [entry[RELAYED_AT] for entry in entries]
    assert all(stamp >= drained_from for stamp in stamps)
    assert stamps == sorted(stamps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 150_000), min_size=1, max_size=6),
    reads=st.lists(st.integers(1, 100_000), min_size=1, max_size=10),
)
def test_line_output_stamps_an_entry_exactly_when_its_last_byte_is_written(
    sizes: list[int], reads: list[int]
) -> None:
    """Stamped iff the line's end is within what the pipe accepted, at every step."""
    lines = [bytes([65 + i % 26]) * (size - 1) + b"\n" for i, size in enumerate(sizes)]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    entries = [new_entry(line) for line in lines]
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    received = bytearray()
    written_total = 0
    try:
        output = LineOutput(write_fd)

        def check() -> None:
            accepted = written_total - output.pending
            assert accepted >= len(received)
            for end, entry in zip(ends, entries, strict=True):
                assert (entry[RELAYED_AT] > 0.0) == (end <= accepted), (end, accepted)

        def take(size: int) -> None:
            with contextlib.suppress(BlockingIOError):
                received.extend(os.read(read_fd, size))

        for index, line in enumerate(lines):
            output.write(line, entries[index])
            written_total += len(line)
            check()
            take(reads[index % len(reads)])
            output.flush()
            check()
        for size in reads:
            take(size)
            output.flush()
            check()
        for _ in range(1000):
            if not output.pending:
                break
            take(1 << 20)
            output.flush()
            check()
        take(1 << 20)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert output.pending == 0
    assert bytes(received) == b"".join(lines)
    assert all(entry[RELAYED_AT] > 0.0 for entry in entries)


def test_line_output_to_a_closed_reader_is_broken_and_counts_as_sent(
    pipe: Pipe,
) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    output = LineOutput(write_fd)
    pipe.close(read_fd)
    entry = new_entry(b'{"id":1}\n')
    before = time.perf_counter()
    output.write(entry[1], entry)  # raises nothing (no SIGPIPE death, no BrokenPipeError)
    assert output.broken
    assert entry[RELAYED_AT] >= before
    assert output.pending == 0
    later = new_entry(b'{"id":2}\n')
    output.write(later[1], later)
    assert later[RELAYED_AT] >= entry[RELAYED_AT]
    assert output.pending == 0


def test_line_output_buffered_lines_count_as_sent_when_the_reader_leaves(
    pipe: Pipe,
) -> None:
    read_fd, write_fd = pipe.read_fd, pipe.write_fd
    output = LineOutput(write_fd)
    entries = [new_entry(b"x" * 100_000 + b"\n") for _ in range(3)]
    for entry in entries:
        output.write(entry[1], entry)
    assert output.pending > 0
    assert [entry[RELAYED_AT] for entry in entries] == [0.0] * 3
    pipe.close(read_fd)
    output.flush()
    assert output.broken
    assert output.pending == 0
    assert all(entry[RELAYED_AT] > 0.0 for entry in entries)


def test_line_output_release_restores_blocking_flags(pipe: Pipe) -> None:
    write_fd = pipe.write_fd
    flags = fcntl.fcntl(write_fd, fcntl.F_GETFL)
    assert not is_nonblocking(write_fd)
    output = LineOutput(write_fd)
    assert is_nonblocking(write_fd)
    entry = new_entry(b"y" * 150_000 + b"\n")
    output.write(entry[1], entry)
    assert output.pending > 0
    assert entry[RELAYED_AT] == 0.0
    output.release()
    assert not is_nonblocking(write_fd)
    assert fcntl.fcntl(write_fd, fcntl.F_GETFL) == flags
    assert output.pending == 0
    assert entry[RELAYED_AT] > 0.0  # given up on: counts as sent
    output.release()  # twice is harmless
    assert not is_nonblocking(write_fd)


def test_line_output_leaves_a_regular_file_flags_alone(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        output = LineOutput(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
        entry = new_entry(b"line\n")
        output.write(entry[1], entry)
        assert entry[RELAYED_AT] > 0.0
        output.release()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"line\n"


# -- Bookkeeping -----------------------------------------------------------------------------


def jline(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def request(message_id: Any, method: str) -> bytes:
    return jline({"jsonrpc": "2.0", "id": message_id, "method": method, "params": {}})


def response(message_id: Any, *, error: bool = False) -> bytes:
    if error:
        return jline({"jsonrpc": "2.0", "id": message_id, "error": {"code": -1, "message": "x"}})
    return jline({"jsonrpc": "2.0", "id": message_id, "result": {"content": []}})


def cancelled(message_id: Any) -> bytes:
    params = {"requestId": message_id, "reason": "user"}
    return jline({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})


class Books:
    """A Bookkeeping on a memory-backed facade, with readers of what it recorded."""

    def __init__(self, tape_path: Path | None = None) -> None:
        self.facade = mf.Metrics({"port": None, "backends": ["memory"]}, environ={})
        self.mock = MetricsMock(self.facade).__enter__()
        self.shadowcat = ShadowcatMetrics(self.facade)
        self.tape = TapeRecorder(str(tape_path), self.shadowcat) if tape_path else None
        self.answered = 0
        self.books = Bookkeeping(
            self.shadowcat, UPSTREAM, TIMEOUT_SECS, tape=self.tape, on_answered=self._answered
        )

    def _answered(self) -> None:
        self.answered += 1

    def record(
        self, origin: str, line: bytes, read_at: float, relayed_at: float, messages: Any = None
    ) -> None:
        parsed = NOT_PARSED if messages is None else messages
        self.books.record([origin, line, read_at, relayed_at, parsed])

    def count(self, name: str, **labels: str) -> float:
        return support.counted(self.mock, name, **labels)

    def observed(self, name: str, **labels: str) -> list[float]:
        return support.observed(self.mock, name, **labels)

    def requests(self, method: str, status: str) -> float:
        return self.count(REQUESTS, method=method, transport="stdio", status=status)

    def errors(self, error_type: str) -> float:
        return self.count(UPSTREAM_ERRORS, upstream=UPSTREAM, error_type=error_type)

    def close(self) -> None:
        self.books.close()
        if self.tape is not None:
            self.tape.close()
        self.mock.__exit__(None, None, None)
        self.facade.close()


@pytest.fixture
def books() -> Iterator[Books]:
    recorder = Books()
    try:
        yield recorder
    finally:
        recorder.close()


def test_request_and_response_record_ok_sizes_duration_and_latency(books: Books) -> None:
    req, resp = request(7, "tools/call"), response(7)
    books.record(FROM_CLIENT, req, read_at=10.0, relayed_at=10.5)
    assert books.books.next_deadline() == 10.5 + TIMEOUT_SECS  # from when the server had it
    assert books.count(REQUESTS) == 0  # not answered yet
    books.record(FROM_SERVER, resp, read_at=11.0, relayed_at=11.25)
    assert books.requests("tools/call", "ok") == 1
    assert books.count(REQUESTS) == 1
    assert books.observed(REQUEST_SIZE, method="tools/call", transport="stdio") == [len(req)]
    assert books.observed(RESPONSE_SIZE, method="tools/call", transport="stdio") == [len(resp)]
    durations = books.observed(DURATION, method="tools/call", transport="stdio", status="ok")
    assert durations == [pytest.approx(11.25 - 10.0)]  # read from the client to relayed back
    # the proxy's own share: the whole minus the time the server had it (10.5 -> 11.0)
    assert books.observed(LATENCY, upstream=UPSTREAM) == [pytest.approx(0.75)]
    assert books.answered == 1
    assert books.count(UPSTREAM_ERRORS) == 0
    assert books.books.next_deadline() is None


def test_pre_parsed_messages_are_used_as_given(books: Books) -> None:
    req = request("abc", "resources/read")
    books.record(FROM_CLIENT, req, 1.0, 1.0, parse_line(req))
    books.record(FROM_SERVER, response("abc", error=True), 2.0, 2.0, parse_line(response("abc")))
    # the given messages (a success) win over the line (an error): the line is not re-parsed
    assert books.requests("resources/read", "ok") == 1
    assert books.requests("resources/read", "error") == 0


def test_error_response_records_error(books: Books) -> None:
    books.record(FROM_CLIENT, request(1, "tools/call"), 1.0, 1.0)
    books.record(FROM_SERVER, response(1, error=True), 2.0, 2.0)
    assert books.requests("tools/call", "error") == 1
    assert books.requests("tools/call", "ok") == 0
    assert books.answered == 1


def test_response_matching_nothing_is_an_unknown_id(books: Books) -> None:
    books.record(FROM_CLIENT, request(1, "ping"), 1.0, 1.0)
    books.record(FROM_SERVER, response(2), 2.0, 2.0)
    assert books.errors("unknown_id") == 1
    assert books.count(REQUESTS) == 0
    assert books.answered == 0
    books.record(FROM_SERVER, response("1"), 2.0, 2.0)  # "1" is not 1
    assert books.errors("unknown_id") == 2
    books.record(FROM_SERVER, response(None, error=True), 2.0, 2.0)  # null: malformed input
    assert books.errors("unknown_id") == 2
    books.record(FROM_SERVER, response(1), 3.0, 3.0)
    assert books.requests("ping", "ok") == 1
    books.record(FROM_SERVER, response(1), 3.0, 3.0)  # answered twice
    assert books.errors("unknown_id") == 3
    books.record(FROM_CLIENT, response(99), 4.0, 4.0)  # the client answers no server request
    assert books.errors("unknown_id") == 4


def test_unparseable_lines_are_malformed_input_and_output(books: Books) -> None:
    books.record(FROM_CLIENT, b"not json\n", 1.0, 1.0)
    books.record(FROM_SERVER, b"{oops\n", 1.0, 1.0)
    assert books.errors("malformed_input") == 1
    assert books.errors("malformed_output") == 1
    books.record(FROM_SERVER, jline([1, {"jsonrpc": "2.0"}]), 1.0, 1.0)  # one per member
    assert books.errors("malformed_output") == 3
    assert books.count(REQUESTS) == 0


def test_batch_request_sizes_are_shared_by_its_members(books: Books) -> None:
    members = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echoes"}},
        {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    ]
    batch = jline(members)
    assert len(batch) % 3 == 2, "two bytes left over from the division"
    share = len(batch) // 3
    books.record(FROM_CLIENT, batch, 1.0, 1.0)
    # The left-over bytes go one each to the first members: the sizes add up to the line.
    for method, size in (("tools/list", share + 1), ("tools/call", share + 1), ("ping", share)):
        assert books.observed(REQUEST_SIZE, method=method) == [size]
    assert sum(books.observed(REQUEST_SIZE)) == len(batch)
    answers = jline([{"jsonrpc": "2.0", "id": i, "result": {}} for i in (3, 1, 2)])
    share = len(answers) // 3
    assert len(answers) % 3 == 2
    books.record(FROM_SERVER, answers, 2.0, 2.0)
    for method, size in (("ping", share + 1), ("tools/list", share + 1), ("tools/call", share)):
        assert books.requests(method, "ok") == 1
        assert books.observed(RESPONSE_SIZE, method=method) == [size]
    assert sum(books.observed(RESPONSE_SIZE)) == len(answers)
    assert books.answered == 3
    assert books.count(UPSTREAM_ERRORS) == 0


def test_expire_times_out_client_requests_after_the_deadline(books: Books) -> None:
    books.record(FROM_CLIENT, request(1, "tools/call"), 99.0, 100.0)
    books.record(FROM_CLIENT, request("two", "prompts/get"), 101.0, 102.0)
    assert books.books.next_deadline() == 100.0 + TIMEOUT_SECS
    assert books.books.expire(104.9) == []
    assert books.count(REQUESTS) == 0
    assert books.books.expire(105.0) == [1]
    assert books.requests("tools/call", "timeout") == 1
    assert books.errors("timeout") == 1
    assert books.books.next_deadline() == 102.0 + TIMEOUT_SECS
    assert books.books.expire(106.0) == []
    assert books.books.expire(200.0) == ["two"]
    assert books.requests("prompts/get", "timeout") == 1
    assert books.errors("timeout") == 2
    assert books.count(REQUESTS, status="ok") == 0
    assert books.books.next_deadline() is None
    assert books.books.expire(300.0) == []


def test_server_request_answered_by_the_client(books: Books) -> None:
    ask = request("s-1", "sampling/createMessage")
    answer = response("s-1")
    books.record(FROM_SERVER, ask, 1.0, 1.1)
    assert books.books.next_deadline() == 1.0 + TIMEOUT_SECS
    books.record(FROM_CLIENT, answer, 2.0, 2.5)
    assert books.requests("sampling/createMessage", "ok") == 1
    method = {"method": "sampling/createMessage"}
    assert books.observed(REQUEST_SIZE, **method) == [len(ask)]
    assert books.observed(RESPONSE_SIZE, **method) == [len(answer)]
    assert books.observed(DURATION, **method) == [pytest.approx(1.5)]
    assert books.count(UPSTREAM_ERRORS) == 0
    assert books.books.next_deadline() is None


def test_unanswered_server_request_expires_without_its_id(books: Books) -> None:
    books.record(FROM_SERVER, request("s-1", "sampling/createMessage"), 10.0, 10.0)
    assert books.books.next_deadline() == 10.0 + TIMEOUT_SECS
    assert books.books.expire(14.0) == []
    assert books.count(REQUESTS) == 0
    assert books.books.expire(15.0) == []  # the proxy answers nothing in the client's name
    assert books.requests("sampling/createMessage", "timeout") == 1
    assert books.books.next_deadline() is None
    books.record(FROM_CLIENT, response("s-1"), 20.0, 20.0)  # a late answer: relayed, no error
    assert books.errors("unknown_id") == 0
    assert books.requests("sampling/createMessage", "ok") == 0
    assert books.count(REQUESTS) == 1


def test_late_answers_are_expected_per_direction(books: Books) -> None:
    """Each side numbers its own requests: a server request 1 that expired allows a late
    answer from the client, not a stray server response with id 1."""
    books.record(FROM_SERVER, request(1, "sampling/createMessage"), 10.0, 10.0)
    assert books.books.expire(10.0 + TIMEOUT_SECS) == []
    books.record(FROM_SERVER, response(1), 20.0, 20.0)  # no client request 1 was made
    assert books.errors("unknown_id") == 1
    books.record(FROM_CLIENT, response(1), 21.0, 21.0)  # the late answer: allowed
    assert books.errors("unknown_id") == 1


def test_a_reused_waiting_id_loses_the_first_request(books: Books) -> None:
    """A client that reuses the id of a request still waiting: the first can no longer be
    matched (recorded as an error), the second is, and deadlines stay in order."""
    books.record(FROM_CLIENT, request(1, "tools/call"), 1.0, 1.0)
    books.record(FROM_CLIENT, request(2, "ping"), 2.0, 2.0)
    books.record(FROM_CLIENT, request(1, "resources/list"), 3.0, 3.0)
    assert books.requests("tools/call", "error") == 1
    assert books.books.next_deadline() == 2.0 + TIMEOUT_SECS
    books.record(FROM_SERVER, response(1), 4.0, 4.0)
    assert books.requests("resources/list", "ok") == 1
    assert books.books.expire(2.0 + TIMEOUT_SECS) == [2]


def test_fail_pending_records_waiting_requests_as_errors(books: Books) -> None:
    books.record(FROM_CLIENT, request(1, "tools/call"), 1.0, 1.0)
    books.record(FROM_CLIENT, request(2, "resources/list"), 1.0, 1.0)
    books.record(FROM_CLIENT, request(3, "ping"), 1.0, 1.0)
    books.record(FROM_SERVER, response(2), 2.0, 2.0)
    assert books.books.fail_pending() == [1, 3]
    assert books.requests("tools/call", "error") == 1
    assert books.requests("ping", "error") == 1
    assert books.requests("resources/list", "ok") == 1
    assert books.count(REQUESTS) == 3
    assert books.books.fail_pending() == []
    assert books.books.next_deadline() is None
    assert books.books.expire(1000.0) == []
    assert books.count(REQUESTS) == 3


def test_client_cancellation_records_cancelled_and_allows_the_late_answer(
    books: Books,
) -> None:
    books.record(FROM_CLIENT, request(5, "tools/call"), 1.0, 1.0)
    books.record(FROM_CLIENT, cancelled(5), 2.0, 2.0)
    assert books.requests("tools/call", "cancelled") == 1
    assert books.requests("notifications/cancelled", "ok") == 1
    assert books.books.next_deadline() is None
    assert books.books.expire(1000.0) == []
    books.record(FROM_SERVER, response(5), 3.0, 3.0)  # the server answered anyway
    assert books.errors("unknown_id") == 0
    assert books.requests("tools/call", "ok") == 0
    assert books.requests("tools/call", "cancelled") == 1
    assert books.answered == 0


def test_server_cancellation_of_its_own_request(books: Books) -> None:
    books.record(FROM_SERVER, request(9, "elicitation/create"), 1.0, 1.0)
    books.record(FROM_SERVER, cancelled(9), 2.0, 2.0)
    assert books.requests("elicitation/create", "cancelled") == 1
    books.record(FROM_CLIENT, response(9), 3.0, 3.0)
    assert books.errors("unknown_id") == 0
    assert books.requests("elicitation/create", "ok") == 0


def test_tape_records_the_three_origins_in_order(tmp_path: Path) -> None:
    tape_path = tmp_path / "session.tape"
    recorder = Books(tape_path)
    lines = [
        (FROM_CLIENT, request(1, "tools/call")),
        (FROM_SERVER, response(1)),
        (FROM_PROXY, jline({"jsonrpc": "2.0", "id": 2, "error": {"code": -32002}})),
        (FROM_CLIENT, jline({"jsonrpc": "2.0", "method": "notifications/initialized"})),
    ]
    before = time.time()
    try:
        for origin, line in lines:
            now = time.perf_counter()
            recorder.record(origin, line, now, now)
        assert recorder.tape is not None
        recorder.tape.close()
        after = time.time()
        taped = [json.loads(row) for row in tape_path.read_bytes().splitlines()]
        tools_call_ok = recorder.requests("tools/call", "ok")
    finally:
        recorder.close()
    assert [row["direction"] for row in taped] == [
        "client_to_server",
        "server_to_client",
        "proxy_to_client",
        "client_to_server",
    ]
    assert [row["message"] for row in taped] == [line.decode().rstrip("\n") for _, line in lines]
    stamps = [row["ts"] for row in taped]
    assert stamps == sorted(stamps)
    assert all(before - 1.0 <= ts <= after + 1.0 for ts in stamps)  # epoch seconds
    assert tools_call_ok == 1  # taping does not replace recording
