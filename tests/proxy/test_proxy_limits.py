"""The proxy's limits hold against a hostile client (issue 11, item 9): memory stays bounded
when the client stops reading, rate limits apply to each member of a batch, and ids are
compared by their exact JSON value (a timed-out id can be reused; two requests in flight
with one id are each answered). Real processes and pipes, bounded waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import require_module
from test_proxy import (
    REQUESTS,
    ScriptedServer,
    call,
    error_code,
    line,
    request,
    start_proxy,
)

psutil = require_module("psutil")

__all__ = ["start_proxy"]  # a fixture, used by name

# -- back-pressure: a client that writes but does not read ---------------------------------------

#: The README's bound for what the proxy holds for stalled peers with the default limits and
#: small lines (a few MiB of buffers and at most MAX_IN_FLIGHT requests in flight), plus the
#: interpreter itself: the whole process stays under this.
RSS_BOUND = 100 * 1024 * 1024

#: Answers its first request with more than a pipe holds, then reads everything and never
#: answers again: the proxy's output to a client that does not read is stuck on one line.
GREEDY_SERVER = r"""
import sys
first = sys.stdin.buffer.readline()
sys.stdout.buffer.write(b'{"jsonrpc":"2.0","id":0,"result":{"pad":"' + b"x" * 300000 + b'"}}\n')
sys.stdout.buffer.flush()
while sys.stdin.buffer.read(65536):
    pass
"""


def _flood(stdin: Any, payload: bytes, stop: threading.Event, written: list[int]) -> None:
    try:
        while not stop.is_set():
            stdin.write(payload)
            written[0] += len(payload)
    except (BrokenPipeError, OSError, ValueError):
        pass


@pytest.mark.parametrize("tape", [False, True], ids=["no-tape", "tape"])
def test_a_client_that_stops_reading_cannot_grow_the_proxy(tmp_path: Path, tape: bool) -> None:
    server = tmp_path / "greedy_server.py"
    server.write_text(GREEDY_SERVER)
    args = [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0"]
    if tape:
        args += ["--tape", str(tmp_path / "tape.jsonl")]
    proxy = subprocess.Popen(
        [*args, "--", sys.executable, str(server)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # never read: the client has stopped reading
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )
    stop = threading.Event()
    written = [0]
    try:
        assert proxy.stdin is not None
        proxy.stdin.write(call(0, "echo"))
        pad = "y" * 16_000
        payload = b"".join(call(i, "echo", text=pad) for i in range(1, 9))
        writer = threading.Thread(
            target=_flood, args=(proxy.stdin, payload, stop, written), daemon=True
        )
        writer.start()
        process = psutil.Process(proxy.pid)
        peak = 0
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and proxy.poll() is None:
            peak = max(peak, process.memory_info().rss)
            if peak > RSS_BOUND:
                break
            time.sleep(0.05)
        assert proxy.poll() is None, "the proxy died"
        assert peak <= RSS_BOUND, (
            f"RSS reached {peak / 2**20:.0f} MiB (bound {RSS_BOUND / 2**20:.0f} MiB) after "
            f"the client wrote {written[0] / 2**20:.0f} MiB"
        )
        # Back-pressure, not a dead proxy: it read megabytes before it stopped reading.
        assert written[0] > 1024 * 1024
    finally:
        stop.set()
        proxy.kill()
        proxy.wait(10)
        for stream in (proxy.stdin, proxy.stdout):
            if stream is not None:
                stream.close()


def test_a_server_that_stops_reading_does_not_stall_what_it_sends(start_proxy, tmp_path):
    """The other way round: the server's input is stuck on a long line it does not read,
    while it keeps sending notifications; they all reach the client, and the proxy's queue
    of unrecorded lines does not hold them back."""
    script = tmp_path / "busy_server.py"
    script.write_text(
        "import sys, time\n"
        "sys.stdin.buffer.readline()\n"
        'note = b\'{"jsonrpc":"2.0","method":"notifications/message","params":{"pad":"\''
        " + b'z' * 1000 + b'\"}}\\n'\n"
        "for _ in range(3000):\n"
        "    sys.stdout.buffer.write(note)\n"
        "sys.stdout.buffer.flush()\n"
        "time.sleep(30)\n"
    )
    proxy = start_proxy([sys.executable, str(script)])
    proxy.send(request(1, "ping"))
    proxy.send(call(2, "echo", text="q" * 2_000_000))  # more than the pipe: never read
    notes = [proxy.out.recv(timeout=10) for _ in range(3000)]
    assert all(b"notifications/message" in note for note in notes)
    count = proxy.settled(3000, REQUESTS, method="notifications/message", status="ok")
    assert count == 3000


# -- rate limits: each member of a batch ---------------------------------------------------------


#: Answers a batch as JSON-RPC says: one array with a response per request.
BATCH_SERVER = r"""
import json, sys
for raw in sys.stdin.buffer:
    payload = json.loads(raw)
    items = payload if isinstance(payload, list) else [payload]
    answers = [{"jsonrpc": "2.0", "id": m["id"], "result": {"echo": m.get("params")}}
               for m in items if "id" in m and "method" in m]
    if answers:
        out = answers if isinstance(payload, list) else answers[0]
        sys.stdout.buffer.write(json.dumps(out).encode() + b"\n")
        sys.stdout.buffer.flush()
"""


def rate_limited_batch() -> bytes:
    members = [json.loads(call(i, "echo", text=str(i))) for i in range(30)]
    return line([*members, json.loads(request("p", "ping"))])


def test_a_batch_is_rate_limited_member_by_member_and_answered_as_one_array(start_proxy, tmp_path):
    script = tmp_path / "batch_server.py"
    script.write_text(BATCH_SERVER)
    proxy = start_proxy(
        [sys.executable, str(script)], proxy_settings={"rate_limits": {"tools/call": 2}}
    )
    proxy.send(rate_limited_batch())
    answer = json.loads(proxy.out.recv(timeout=5))
    assert isinstance(answer, list), answer
    by_id = {m["id"]: m for m in answer}
    assert len(answer) == len(by_id) == 31
    passed = [i for i in range(30) if "result" in by_id[i]]
    refused = [i for i in range(30) if error_code(by_id[i]) == -32002]
    assert len(passed) in (2, 3), passed  # a bucket of 2, at most a refill meanwhile
    assert passed[:2] == [0, 1]
    assert len(passed) + len(refused) == 30
    assert "result" in by_id["p"]
    assert proxy.out.quiet_for(0.3) == []  # one array, nothing else
    limited = "shadowcat_rate_limit_exceeded_total"
    assert proxy.count(limited, limit_type="per_method") == len(refused)
    errors = proxy.settled(len(refused), REQUESTS, method="tools/call", status="error")
    assert errors == len(refused)
    assert proxy.settled(len(passed), REQUESTS, method="tools/call", status="ok") == len(passed)


def test_a_rate_limited_batch_to_a_server_answering_members_singly(start_proxy):
    """The demo server answers a batch's requests one line each: the proxy's refusals come
    as an array after the first of them; every member is answered once."""
    proxy = start_proxy(proxy_settings={"rate_limits": {"tools/call": 2}})
    proxy.send(rate_limited_batch())
    seen: list[dict[str, Any]] = []
    while len(seen) < 31:
        answer = json.loads(proxy.out.recv(timeout=5))
        seen.extend(answer if isinstance(answer, list) else [answer])
    assert sorted(str(m["id"]) for m in seen) == sorted(str(i) for i in [*range(30), "p"])
    assert sum(error_code(m) == -32002 for m in seen) in (27, 28)
    assert proxy.out.quiet_for(0.3) == []


def test_a_batch_refused_whole_and_one_with_only_notifications_left(start_proxy):
    proxy = start_proxy(proxy_settings={"rate_limits": {"tools/call": 1}})
    assert "result" in proxy.ask(call("warm", "echo"))  # the bucket is empty now
    batch = [json.loads(call(1, "echo")), json.loads(call(2, "echo"))]
    answer = json.loads(proxy.out.recv() if proxy.send(line(batch)) is None else b"")
    assert [(m["id"], error_code(m)) for m in answer] == [(1, -32002), (2, -32002)]
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    proxy.send(line([json.loads(call(3, "echo")), note]))
    answer = json.loads(proxy.out.recv())
    assert [(m["id"], error_code(m)) for m in answer] == [(3, -32002)]
    assert proxy.out.quiet_for(0.3) == []


# -- ids: exact values, reuse after a timeout, duplicates in flight ------------------------------


def test_a_timed_out_id_can_be_reused_before_its_late_answer(start_proxy, tmp_path):
    """The issue's case: id 5 times out, and the server has not answered it when a new
    request with id 5 comes: the new request's answer reaches the client."""
    server = ScriptedServer(tmp_path)  # "late-ask" never answers (it asks the client later)
    proxy = start_proxy(server.command, {"request_timeout_secs": 1.2})
    proxy.send(call(5, "late-ask"))
    asked = proxy.recv_json(timeout=3)
    assert asked == {"jsonrpc": "2.0", "id": 5, "method": "roots/list"}
    timed_out = proxy.recv_json(timeout=3)
    assert (timed_out["id"], error_code(timed_out)) == (5, -32001)
    answer = proxy.ask(call(5, "echo"), timeout=1.0)
    assert (answer["id"], answer["result"]["tool"]) == (5, "echo"), answer
    assert proxy.out.quiet_for(0.3) == []
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    assert proxy.requests("tools/call", "timeout") == 1


def test_a_timed_out_id_can_be_reused(start_proxy):
    """The demo server works one call at a time: the second call is answered right after
    the late answer to the first, which must be told apart from it."""
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.4})
    proxy.send(call(5, "slow", seconds=0.6))
    first = proxy.recv_json(timeout=2)
    assert (first["id"], error_code(first)) == (5, -32001)
    second = proxy.ask(call(5, "echo", text="the new one"), timeout=2)
    assert second["id"] == 5
    assert second["result"]["content"][0]["text"] == "the new one"
    # The late answer to the first (at 0.6 s) is dropped; no second -32001.
    assert proxy.out.quiet_for(0.6) == []
    # ... and once it came, the id is the client's again, as it is.
    assert proxy.ask(call(5, "echo", text="third"))["result"]["content"][0]["text"] == "third"
    assert proxy.settled(2, REQUESTS, method="tools/call", status="ok") == 2
    assert proxy.requests("tools/call", "timeout") == 1
    assert proxy.upstream_errors("unknown_id") == 0


def test_two_requests_in_flight_with_one_id_are_each_answered(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5})
    proxy.send(call(7, "slow", seconds=0.2) + call(7, "echo", text="second"))
    answers = proxy.out.recv_many(2, timeout=3)
    assert [m["id"] for m in answers] == [7, 7]
    texts = sorted(m["result"]["content"][0]["text"] for m in answers)
    assert texts == ["done", "second"]
    # Both time out: each gets its own -32001, and neither late answer follows.
    proxy.send(call(8, "slow", seconds=1.0) + call(8, "slow", seconds=1.0))
    timed_out = proxy.out.recv_many(2, timeout=3)
    assert [(m["id"], error_code(m)) for m in timed_out] == [(8, -32001), (8, -32001)]
    assert proxy.out.quiet_for(1.0) == []
    assert proxy.settled(2, REQUESTS, method="tools/call", status="timeout") == 2
    assert proxy.upstream_errors("unknown_id") == 0


def test_a_cancellation_reaches_the_request_that_reused_an_id(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3})
    proxy.send(call(9, "slow", seconds=0.8))
    assert error_code(proxy.recv_json(timeout=2)) == -32001
    proxy.send(call(9, "slow", seconds=0.5))
    cancel = {"requestId": 9, "reason": "no longer needed"}
    proxy.send(line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel}))
    # The demo server answers a cancelled request anyway: with the client's id.
    late = proxy.recv_json(timeout=2)
    assert late["id"] == 9
    assert late["result"]["content"][0]["text"] == "done"
    assert proxy.settled(1, REQUESTS, method="tools/call", status="cancelled") == 1


BIG = 2**100


def test_ids_beyond_64_bits_stay_exact_in_timeouts(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3})
    proxy.send(call(BIG, "slow", seconds=0.8))
    raw = proxy.out.recv(timeout=2)
    assert f'"id":{BIG},'.encode() in raw, raw
    assert json.loads(raw)["id"] == BIG
    assert error_code(json.loads(raw)) == -32001
    assert proxy.out.quiet_for(0.8) == []  # the late answer, with the same big id: dropped
    answer = proxy.ask(call(BIG + 1, "echo", text="big"))
    assert answer["id"] == BIG + 1
    assert answer["result"]["content"][0]["text"] == "big"


def test_one_one_point_zero_and_the_string_one_are_three_ids(start_proxy):
    """Three requests time out together; each answer carries its id exactly as sent, and
    each late answer is dropped by its own id (the demo server answers one at a time)."""
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3})
    proxy.send(call(1, "slow", seconds=0.4) + call(1.0, "slow", seconds=0.4) + call("1", "echo"))
    answers = sorted(proxy.out.recv(timeout=2) for _ in range(3))
    assert answers == sorted(
        b'{"jsonrpc":"2.0","id":%s,"error":{"code":-32001,"message":"upstream timed out"}}\n'
        % spelled
        for spelled in (b"1", b"1.0", b'"1"')
    )
    assert proxy.out.quiet_for(1.0) == []
    assert proxy.requests("tools/call", "timeout") == 3
    assert proxy.upstream_errors("unknown_id") == 0


def test_the_proxy_leaves_no_renamed_id_visible(start_proxy, tmp_path):
    """What the client receives never carries an id of the proxy's own, and the tape
    shows what went over each pipe."""
    tape = tmp_path / "tape.jsonl"
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3}, tape_path=tape)
    proxy.send(call("a", "slow", seconds=0.6))
    assert error_code(proxy.recv_json(timeout=2)) == -32001
    batch = [json.loads(call("a", "echo", text="x")), json.loads(request("b", "ping"))]
    proxy.send(line(batch))
    answers = [json.loads(proxy.out.recv(timeout=2)) for _ in range(2)]  # one at a time
    assert sorted(m["id"] for m in answers) == ["a", "b"]
    assert proxy.out.quiet_for(0.5) == []
    proxy.close_client()
    directions = [json.loads(raw)["direction"] for raw in tape.read_bytes().splitlines()]
    assert directions.count("client_to_server") == 2
    assert b"metricsfacade-id-" not in b"".join(proxy.out.seen)
    assert os.path.getsize(tape) > 0
