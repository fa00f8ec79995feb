"""The proxy's edges: a request line over the size limit, a batch's bytes, and
``shadowcat_goroutines`` in the threaded proxy."""

from __future__ import annotations

import re
from typing import Any

import pytest
from support import eventually
from test_proxy import (
    REQUESTS,
    ScriptedServer,
    call,
    http_get,
    line,
    request,
    start_proxy,
    start_proxy_process,
)

__all__ = ["start_proxy", "start_proxy_process"]  # fixtures, used by name

TOO_LONG = {"code": -32600, "message": "message too long"}
LIMIT = 2048
PAD = "x" * 5000  # past the limit


def answer_to(proxy: Any, data: bytes) -> dict[str, Any]:
    proxy.send(data)
    answer: dict[str, Any] = proxy.recv_json()
    assert answer["error"] == TOO_LONG
    return answer


# -- a line over max_line_bytes ------------------------------------------------------------------


def test_a_too_long_request_is_answered_with_its_id_and_counted_under_its_method(
    start_proxy, tmp_path
):
    """The issue's case: answered with "id": null (the client waited for its own timeout)
    and counted only as input_too_long."""
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"max_line_bytes": LIMIT})
    assert answer_to(proxy, call(7, "echo", text=PAD))["id"] == 7
    assert answer_to(proxy, request("str-8", "resources/read", {"uri": PAD}))["id"] == "str-8"
    assert proxy.settled(1, REQUESTS, method="resources/read", status="error") == 1
    assert proxy.requests("tools/call", "error") == 1
    assert proxy.upstream_errors("input_too_long") == 2
    assert proxy.ask(call(10, "echo"))["id"] == 10  # the session goes on
    assert b"x" * 100 not in server.received()


def test_a_too_long_line_whose_start_names_no_request_is_answered_with_a_null_id(
    start_proxy, tmp_path
):
    """Only the top-level members before the cut count: an id after the long params, an id
    inside the params, or a response's id (the client answering a server request) are not
    a request's id."""
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"max_line_bytes": LIMIT})
    id_last = line({"jsonrpc": "2.0", "method": "tools/call", "params": {"p": PAD}, "id": 3})
    assert answer_to(proxy, id_last)["id"] is None
    nested = line({"jsonrpc": "2.0", "method": "prompts/get", "params": {"id": 4, "p": PAD}})
    assert answer_to(proxy, nested)["id"] is None
    response = line({"jsonrpc": "2.0", "id": 5, "result": {"p": PAD}})
    assert answer_to(proxy, response)["id"] is None
    batch = line([{"jsonrpc": "2.0", "id": 6, "method": "ping", "params": {"p": PAD}}])
    assert answer_to(proxy, batch)["id"] is None
    # Counted under the method when its start names one, as an error.
    assert proxy.settled(1, REQUESTS, method="prompts/get", status="error") == 1
    assert proxy.requests("tools/call", "error") == 1
    assert proxy.count(REQUESTS) == 2
    assert proxy.upstream_errors("input_too_long") == 4


def test_max_line_bytes_from_the_config_file_is_honoured(start_proxy_process):
    proxy = start_proxy_process(config=f"[metrics.proxy]\nmax_line_bytes = {LIMIT}\n")
    base = call(1, "echo", text="")
    exact = call(1, "echo", text="y" * (LIMIT - len(base)))
    assert len(exact) == LIMIT
    assert proxy.ask(exact)["result"]["content"][0]["text"] == "y" * (LIMIT - len(base))
    over = call(2, "echo", text="y" * (LIMIT - len(base) + 1))
    assert proxy.ask(over) == {"jsonrpc": "2.0", "id": 2, "error": TOO_LONG}
    assert proxy.close_client() == 0


# -- a batch's bytes -----------------------------------------------------------------------------


def batch_of(count: int, size: int) -> bytes:
    """A batch line of ``count`` pings, ``size`` bytes long with its newline."""
    members: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(count)
    ]
    members[0]["params"] = {"pad": ""}
    members[0]["params"]["pad"] = "p" * (size - len(line(members)))
    data = line(members)
    assert len(data) == size
    return data


def test_a_batchs_sizes_add_up_to_the_bytes_relayed(start_proxy) -> None:
    """The issue's case: a 1,032-byte batch of 10 recorded 10 x 103 bytes, 2 short."""
    proxy = start_proxy()
    batch = batch_of(10, 1032)
    proxy.send(batch)
    assert sorted(answer["id"] for answer in proxy.out.recv_many(10)) == list(range(10))
    sizes = "shadowcat_request_size_bytes"
    eventually(lambda: len(proxy.observed(sizes)) >= 10, message="ten sizes observed")
    assert len(proxy.observed(sizes)) == 10
    assert sum(proxy.observed(sizes)) == 1032
    assert sorted(proxy.observed(sizes)) == [103] * 8 + [104] * 2


# -- shadowcat_goroutines ------------------------------------------------------------------------


def gauge(url: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", http_get(url + "/metrics")[1].decode(), re.M)
    assert found, f"{name} is not exposed"
    return float(found.group(1))


@pytest.mark.parametrize("slow_calls", [1, 3])
def test_goroutines_counts_the_requests_in_flight(start_proxy_process, slow_calls: int) -> None:
    """The issue's case: always 0 in the proxy (and the demo, which runs it), which relays
    on one thread and has no asyncio tasks to count."""
    proxy = start_proxy_process()
    url = proxy.metrics_url()
    assert gauge(url, "shadowcat_goroutines") == 0
    for index in range(slow_calls):  # the demo server answers one at a time
        proxy.send(call(index, "slow", seconds=1.0 if index == 0 else 0.0))
    eventually(
        lambda: gauge(url, "shadowcat_goroutines") == slow_calls,
        5,
        message=f"{slow_calls} requests in flight",
    )
    assert len(proxy.out.recv_many(slow_calls, timeout=10)) == slow_calls
    eventually(lambda: gauge(url, "shadowcat_goroutines") == 0, 5, message="none in flight")
    assert proxy.close_client() == 0
