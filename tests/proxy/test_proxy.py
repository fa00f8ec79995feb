"""`metricsfacade proxy`: the MCP stdio forward proxy, with real processes and real pipes.

Two ways to run it: in-process (``StdioProxy`` on a thread, os.pipe() for the client's side,
metrics read from the memory backend) and as a real ``python -m metricsfacade proxy``
subprocess (exit status, stdout/stderr separation, the HTTP endpoint, orphans). The server is
the bundled demo server, or a small scripted server written to tmp_path where the test must
see exactly what the server received or make the server misbehave.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from support import eventually, require_module

import metricsfacade as mf
from metricsfacade.config import load_config
from metricsfacade.proxy import StdioProxy
from metricsfacade.proxy.tape import TapeRecorder
from metricsfacade.shadowcat import ShadowcatMetrics
from metricsfacade.testing import MetricsMock

psutil = require_module("psutil")

DEMO = [sys.executable, "-m", "metricsfacade.demo.server"]
REQUESTS = "shadowcat_requests_total"
UPSTREAM_ERRORS = "shadowcat_upstream_errors_total"
BREAKER = "shadowcat_circuit_breaker_state"
UPSTREAM = {"upstream": "upstream"}


# -- messages ----------------------------------------------------------------------------------


def line(message: dict[str, Any] | list[Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def request(request_id: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return line(message)


def call(request_id: Any, tool: str, **arguments: Any) -> bytes:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments})


def initialize(request_id: Any = 1) -> bytes:
    return request(
        request_id,
        "initialize",
        {
            "protocolVersion": "2025-06-18",
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "test-client", "version": "1.0"},
        },
    )


INITIALIZED = line({"jsonrpc": "2.0", "method": "notifications/initialized"})


def error_code(message: dict[str, Any]) -> int | None:
    return message["error"]["code"] if "error" in message else None


class LineReader:
    """Reads lines from a binary pipe on a thread, so tests can wait with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.seen: list[bytes] = []
        self.eof = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            for raw in stream:
                self.lines.put(raw)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            self.eof.set()
            self.lines.put(None)

    def recv(self, timeout: float = 5.0) -> bytes:
        try:
            raw = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the proxy within {timeout} s") from None
        if raw is None:
            self.lines.put(None)
            raise AssertionError("the proxy closed its output")
        self.seen.append(raw)
        return raw

    def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(self.recv(timeout))

    def recv_many(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.recv_json(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def drain(self, timeout: float = 5.0) -> list[bytes]:
        """Every line until the proxy closes its output."""
        rest = []
        while True:
            try:
                raw = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the proxy kept its output open {timeout} s") from None
            if raw is None:
                self.lines.put(None)
                return rest
            self.seen.append(raw)
            rest.append(raw)

    def quiet_for(self, seconds: float) -> list[bytes]:
        """Lines that arrive within ``seconds`` (the caller usually expects none)."""
        extra = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if raw is None:
                self.lines.put(None)
                break
            self.seen.append(raw)
            extra.append(raw)
        return extra


# -- the proxy in-process ----------------------------------------------------------------------


class StateLog(ShadowcatMetrics):
    """Also keeps every circuit breaker transition (the gauge only holds the last one)."""

    def __init__(self, facade: mf.Metrics) -> None:
        self.states: list[str] = []
        super().__init__(facade)

    def circuit_breaker_state(self, upstream: str, state: str | int) -> None:
        self.states.append(str(state))
        super().circuit_breaker_state(upstream, state)


class InProcessProxy:
    def __init__(
        self,
        command: list[str],
        proxy_settings: dict[str, Any] | None = None,
        tape_path: Path | None = None,
    ) -> None:
        self.facade = mf.Metrics({"port": None, "backends": ["memory"]}, environ={})
        self.mock = MetricsMock(self.facade).__enter__()
        settings = load_config({"proxy": proxy_settings or {}}, environ={}).table("proxy")
        self.shadowcat = StateLog(self.facade)
        client_in_r, client_in_w = os.pipe()
        client_out_r, client_out_w = os.pipe()
        self._to_proxy = os.fdopen(client_in_w, "wb", buffering=0)
        self._client_in = os.fdopen(client_in_r, "rb")
        self._client_out = os.fdopen(client_out_w, "wb")
        self.out = LineReader(os.fdopen(client_out_r, "rb"))
        self.tape = TapeRecorder(str(tape_path), self.shadowcat) if tape_path else None
        self.proxy = StdioProxy(
            command, settings, self.shadowcat, self._client_in, self._client_out, tape=self.tape
        )
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.proxy.run()

    def send(self, data: bytes) -> None:
        self._to_proxy.write(data)

    def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.out.recv_json(timeout)

    def ask(self, data: bytes, timeout: float = 5.0) -> dict[str, Any]:
        self.send(data)
        return self.recv_json(timeout)

    def close_client(self, timeout: float = 10.0) -> int | None:
        """Close the client's side (EOF on the proxy's stdin) and wait for run() to return."""
        with contextlib.suppress(OSError):
            self._to_proxy.close()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after the client hung up"
        return self.exit_code

    def teardown(self) -> None:
        with contextlib.suppress(OSError):
            self._to_proxy.close()
        self.proxy.stop()
        self.thread.join(10)
        for stream in (self._client_in, self._client_out):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        self.mock.__exit__(None, None, None)
        self.facade.close()

    # -- metrics -------------------------------------------------------------------------------

    def count(self, name: str, **labels: str) -> float:
        return support.counted(self.mock, name, **labels)

    def observed(self, name: str, **labels: str) -> list[float]:
        return support.observed(self.mock, name, **labels)

    def requests(self, method: str, status: str) -> float:
        return self.count(REQUESTS, method=method, status=status)

    def upstream_errors(self, error_type: str) -> float:
        return self.count(UPSTREAM_ERRORS, error_type=error_type, **UPSTREAM)

    def settled(self, expected: float, name: str, **labels: str) -> float:
        """Poll a metric until it equals ``expected`` (the proxy records after relaying, so
        metrics lag the traffic a little); returns the last value read, for the caller to
        assert on."""
        eventually(lambda: self.count(name, **labels) == expected, 3.0, fail=False)
        return self.count(name, **labels)


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., InProcessProxy]]:
    proxies: list[InProcessProxy] = []

    def start(
        command: list[str] | None = None,
        proxy_settings: dict[str, Any] | None = None,
        tape_path: Path | None = None,
    ) -> InProcessProxy:
        proxy = InProcessProxy(command or DEMO, proxy_settings, tape_path)
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.teardown()
        proxies.clear()
        # The proxy leaves the server's stdout pipe to the garbage collector (see
        # test_the_proxy_closes_the_server_pipes_it_opened): collect it here, so that its
        # ResourceWarning does not surface in whichever later test happens to run the GC.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def collect_unclosed_files() -> list[str]:
    """Run the GC and return the ResourceWarnings it raises for files left open."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# -- a scripted server, for what the demo server cannot show ------------------------------------

SCRIPTED_SERVER = r"""
import json, os, sys, time

log_path, template_path = sys.argv[1], sys.argv[2]
reverse = int(sys.argv[3]) if len(sys.argv) > 3 else 0
log = open(log_path, "ab", buffering=0)
template = open(template_path, "rb").read() if template_path != "-" else b""
out = sys.stdout.buffer
held = []


def send(data):
    out.write(data)
    out.flush()


def answer(message):
    rid, method = message["id"], message["method"]
    id_json = json.dumps(rid).encode()
    params = message.get("params") or {}
    tool = params.get("name")
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {},
                  "serverInfo": {"name": "scripted", "version": "1"}}
    elif tool == "crash":
        os._exit(3)
    elif tool == "odd":
        return send(template.replace(b"@ID@", id_json))
    elif tool == "garbage":
        send(b"this is not JSON {\n")
        result = {"after": "garbage"}
    elif tool == "ghost":
        send(b'{"jsonrpc":"2.0","id":"nobody-asked","result":{}}\n')
        result = {"after": "ghost"}
    elif tool == "big":
        send(b'{"jsonrpc":"2.0","id":' + id_json + b',"result":{"pad":"' + b"x" * 5000 + b'"}}\n')
        result = {"small": True}
    elif tool == "late-ask":  # no answer: a request of its own, reusing the id, later
        time.sleep(1.0)
        return send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "roots/list"}).encode()
                    + b"\n")
    elif tool == "fail":
        return send(json.dumps({"jsonrpc": "2.0", "id": rid,
                                "error": {"code": -32603, "message": "failed"}}).encode() + b"\n")
    else:
        result = {"method": method, "tool": tool, "id": rid}
    send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode() + b"\n")


for raw in sys.stdin.buffer:
    log.write(raw)
    try:
        payload = json.loads(raw)
    except ValueError:
        continue
    for item in payload if isinstance(payload, list) else [payload]:
        if isinstance(item, dict) and "method" in item and "id" in item:
            if reverse:
                held.append(item)
                if len(held) == reverse:
                    for message in reversed(held):
                        answer(message)
                    held.clear()
            else:
                answer(item)
"""


class ScriptedServer:
    def __init__(self, tmp_path: Path, template: bytes | None = None, reverse: int = 0) -> None:
        script = tmp_path / "scripted_server.py"
        script.write_text(SCRIPTED_SERVER)
        self.log = tmp_path / "server_received.jsonl"
        template_arg = "-"
        if template is not None:
            (tmp_path / "template").write_bytes(template)
            template_arg = str(tmp_path / "template")
        self.command = [sys.executable, str(script), str(self.log), template_arg]
        if reverse:
            self.command.append(str(reverse))

    def received(self) -> bytes:
        return self.log.read_bytes() if self.log.exists() else b""


# -- the proxy as a subprocess ------------------------------------------------------------------


class ProxyProcess:
    def __init__(self, tmp_path: Path, *extra_args: str, config: str | None = None) -> None:
        args = [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0"]
        if config is not None:
            path = tmp_path / "proxy.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        args += [*extra_args, "--", *DEMO]
        self.stderr_path = tmp_path / "proxy.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.out = LineReader(self.process.stdout)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def ask(self, data: bytes, timeout: float = 5.0) -> dict[str, Any]:
        self.send(data)
        return self.out.recv_json(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def metrics_url(self) -> str:
        found = eventually(
            lambda: re.search(r"metrics at (http://127\.0\.0\.1:\d+)/metrics", self.stderr()),
            10,
            message="the 'metrics at' log line",
        )
        return found.group(1)

    def server_pid(self) -> int:
        children = eventually(
            lambda: psutil.Process(self.process.pid).children(), 5, message="the server process"
        )
        assert len(children) == 1, children
        return children[0].pid

    def close_client(self, timeout: float = 10.0) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout)

    def teardown(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()  # type: ignore[union-attr]
        self._stderr.close()


@pytest.fixture
def start_proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    processes: list[ProxyProcess] = []

    def start(*extra_args: str, config: str | None = None) -> ProxyProcess:
        process = ProxyProcess(tmp_path, *extra_args, config=config)
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.teardown()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- relay -------------------------------------------------------------------------------------

ODD_RESPONSE = (
    b'{ "result" :  {"z": 1,"a" : "caf\\u00e9 \\ud83d\\ude00 '
    + "raw é 😀".encode()
    + b'", "nested":{"b":[1 , 2.50, -0.0, 1e3],"a":null}} ,"id" : @ID@,  "jsonrpc":"2.0"  }\n'
)


def test_relay_is_byte_exact_in_both_directions(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path, template=ODD_RESPONSE)
    proxy = start_proxy(server.command)
    sent = [
        b'{  "method" : "tools/call" ,"params":{"arguments":{"text":"caf\\u00e9 \\ud83d\\ude00"},'
        b'"name":"odd"}, "id":1,"jsonrpc"  :"2.0"}\n',
        b'{"jsonrpc":"2.0","method":"notifications/odd","params":{"raw":"'
        + "é 😀 \u2028".encode()
        + b'"}}\n',
        b'[{"jsonrpc":"2.0","id":"b-1","method":"ping"} , '
        b'{"id":2.0e0,"jsonrpc":"2.0","method":"ping","params":{ }}]\n',
        b'{"jsonrpc":"2.0","id":"last","params":{"name":"odd","arguments":{}},'
        b'"method":"tools/call"}\n',
    ]
    for data in sent:
        proxy.send(data)
    received = [proxy.out.recv() for _ in range(4)]

    # Client -> server: the server read exactly the client's bytes, lines intact, in order.
    assert server.received() == b"".join(sent)
    # Server -> client: the odd bytes arrive unchanged (spacing, key order, escapes, UTF-8).
    by_id = {json.loads(raw)["id"]: raw for raw in received}
    assert by_id[1] == ODD_RESPONSE.replace(b"@ID@", b"1")
    assert by_id["last"] == ODD_RESPONSE.replace(b"@ID@", b'"last"')
    assert json.loads(by_id["b-1"])["result"]["method"] == "ping"
    assert json.loads(by_id[2.0])["result"]["id"] == 2.0


def test_relay_with_the_demo_server_batch_and_escapes(start_proxy):
    proxy = start_proxy()
    proxy.send(b'{ "id" : 5 ,  "method":"ping", "jsonrpc" : "2.0" }\n')
    assert proxy.out.recv() == b'{"jsonrpc":"2.0","id":5,"result":{}}\n'
    proxy.send(
        b'[{"jsonrpc":"2.0","id":"b1","method":"ping"},  {"jsonrpc":"2.0","id":"b2",'
        b'"method":"tools/call","params":{"name":"echo","arguments":{"text":"\\u00e9\\n"}}}]\n'
    )
    assert proxy.out.recv() == b'{"jsonrpc":"2.0","id":"b1","result":{}}\n'
    assert proxy.out.recv() == (
        b'{"jsonrpc":"2.0","id":"b2","result":{"content":[{"type":"text","text":"\\u00e9\\n"}]}}\n'
    )
    # Both requests of the batch line were correlated and counted.
    assert proxy.settled(2, REQUESTS, method="ping", status="ok") == 2
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    assert proxy.upstream_errors("unknown_id") == 0


def test_stdout_carries_only_protocol_lines(start_proxy_process):
    proxy = start_proxy_process()
    url = proxy.metrics_url()  # logged on stderr
    proxy.send(initialize(1) + INITIALIZED)
    proxy.send(call(2, "echo", text="hello") + call(3, "fail") + b"not json\n")
    proxy.send(request(4, "no/such/method"))
    responses = proxy.out.recv_many(5)
    assert proxy.close_client() == 0
    proxy.out.drain()
    assert len(proxy.out.seen) == 5
    for raw in proxy.out.seen:
        message = json.loads(raw)  # every stdout line is a JSON-RPC message
        assert message.get("jsonrpc") == "2.0", raw
    assert [m["id"] for m in responses] == [1, 2, 3, None, 4]
    stderr = proxy.stderr()
    assert f"metrics at {url}/metrics" in stderr
    assert "metrics at" not in b"".join(proxy.out.seen).decode()


# -- correlation -------------------------------------------------------------------------------


def test_string_and_integer_ids_stay_distinct_when_answered_out_of_order(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path, reverse=4)  # holds 4 requests, answers the last first
    proxy = start_proxy(server.command)
    proxy.send(call(1, "fail") + call("1", "echo") + call(2, "echo") + call("2", "fail"))
    responses = proxy.out.recv_many(4)
    assert [m["id"] for m in responses] == ["2", 2, "1", 1]
    assert [error_code(m) for m in responses] == [-32603, None, None, -32603]
    assert responses[1]["result"]["id"] == 2
    assert responses[2]["result"]["id"] == "1"
    # 1 and "1" are two requests: each response finished its own request with its status.
    assert proxy.settled(2, REQUESTS, method="tools/call", status="error") == 2
    assert proxy.settled(2, REQUESTS, method="tools/call", status="ok") == 2
    assert proxy.upstream_errors("unknown_id") == 0


def test_concurrent_requests_each_get_their_own_response(start_proxy):
    proxy = start_proxy()
    assert "result" in proxy.ask(initialize(0))
    started = time.monotonic()
    proxy.send(
        call(1, "slow", seconds=0.3)
        + call("1", "echo", text="string one")
        + call(2, "add", a=2, b=3)
        + call("x", "fail")
        + request(3, "ping")
    )
    responses = {json.dumps(m["id"]): m for m in proxy.out.recv_many(5)}
    assert time.monotonic() - started >= 0.3
    assert sorted(responses) == sorted(["1", '"1"', "2", '"x"', "3"])
    assert responses["1"]["result"]["content"][0]["text"] == "done"
    assert responses['"1"']["result"]["content"][0]["text"] == "string one"
    assert responses["2"]["result"]["content"][0]["text"] == "5"
    assert error_code(responses['"x"']) == -32603
    assert responses["3"]["result"] == {}
    assert proxy.settled(3, REQUESTS, method="tools/call", status="ok") == 3
    assert proxy.settled(1, REQUESTS, method="tools/call", status="error") == 1
    assert proxy.settled(1, REQUESTS, method="ping", status="ok") == 1
    assert proxy.requests("initialize", "ok") == 1
    durations = proxy.observed(
        "shadowcat_request_duration_seconds", method="tools/call", status="ok"
    )
    assert len(durations) == 3
    assert max(durations) >= 0.29  # the slow call's duration is its own
    assert proxy.upstream_errors("unknown_id") == 0


def test_pipelined_requests_each_get_exactly_one_response(start_proxy):
    """Requests sent without waiting (a client pipelining, or `cat requests | proxy`).

    Each request must be answered once; its response must finish its own tracker."""
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 1.0})
    count = 300
    proxy.send(b"".join(request(i, "ping") for i in range(count)))
    responses = proxy.out.recv_many(count, timeout=10)
    late = [json.loads(raw) for raw in proxy.out.quiet_for(1.6)]  # past the timeout
    ids = Counter(m["id"] for m in responses + late)
    twice = {i: n for i, n in ids.items() if n > 1}
    assert not twice, f"ids answered more than once: {twice}; extra lines: {late[:3]}"
    assert proxy.upstream_errors("unknown_id") == 0
    assert proxy.requests("ping", "timeout") == 0
    assert proxy.settled(count, REQUESTS, method="ping", status="ok") == count


def test_a_response_recorded_before_its_request_is_still_matched(start_proxy, tmp_path):
    """A tape on a slow disk (here a FIFO read late) stalls the bookkeeping while the server
    answers: the response must still finish its request once the tape catches up, and the
    client must not get a second (timeout) answer for the same id."""
    tape_path = tmp_path / "slow.tape"
    os.mkfifo(tape_path)
    go = threading.Event()
    tape_bytes: list[bytes] = []

    def slow_tape_disk() -> None:
        with open(tape_path, "rb") as fifo:
            go.wait(10)
            tape_bytes.extend(iter(lambda: fifo.read(65536), b""))

    reader = threading.Thread(target=slow_tape_disk, daemon=True)
    reader.start()
    try:
        proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5}, tape_path=tape_path)
        big = "x" * 100_000  # its tape entry fills the FIFO: the tape writer waits for the disk
        proxy.send(call(1, "echo", text=big))
        response = proxy.recv_json()
        assert response["result"]["content"][0]["text"] == big
    finally:
        go.set()
    extra = [json.loads(raw) for raw in proxy.out.quiet_for(1.0)]
    assert extra == [], f"a second answer for id 1: {extra}"
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    assert proxy.requests("tools/call", "timeout") == 0
    assert proxy.upstream_errors("unknown_id") == 0
    proxy.close_client()
    reader.join(5)
    assert len([raw for raw in b"".join(tape_bytes).splitlines() if raw]) == 2


def test_client_eof_after_pipelined_requests_answers_each_once(start_proxy):
    """`cat requests | proxy`: the client sends everything and closes its side at once."""
    proxy = start_proxy()
    count = 200
    proxy.send(b"".join(call(i, "echo", text="z" * 500) for i in range(count)))
    assert proxy.close_client() == 0
    answers = [json.loads(raw) for raw in proxy.out.quiet_for(0.5)]
    ids = Counter(m["id"] for m in answers)
    assert sorted(ids) == list(range(count))
    assert {n for n in ids.values()} == {1}, {i: n for i, n in ids.items() if n > 1}
    ok = sum("result" in m for m in answers)
    assert proxy.requests("tools/call", "ok") == ok
    assert proxy.requests("tools/call", "error") == count - ok
    assert proxy.upstream_errors("unknown_id") == 0


# -- server requests, notifications, sessions --------------------------------------------------


def test_server_to_client_request_round_trip(start_proxy):
    proxy = start_proxy()
    assert "result" in proxy.ask(initialize(1))
    sampling = proxy.ask(call(2, "ask", question="meaning?"))
    assert sampling["method"] == "sampling/createMessage"
    assert sampling["params"]["messages"][0]["content"]["text"] == "meaning?"
    answer = {
        "jsonrpc": "2.0",
        "id": sampling["id"],
        "result": {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"},
    }
    result = proxy.ask(line(answer))
    assert result["id"] == 2
    assert result["result"]["content"][0]["text"] == "model: 42"
    assert proxy.settled(1, REQUESTS, method="sampling/createMessage", status="ok") == 1
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    sizes = proxy.observed("shadowcat_response_size_bytes", method="sampling/createMessage")
    assert sizes == [len(line(answer))]
    assert proxy.upstream_errors("unknown_id") == 0


def test_notifications_are_counted_and_initialize_opens_a_session(start_proxy):
    proxy = start_proxy()
    sessions = "shadowcat_active_sessions"
    assert proxy.count(sessions) == 0
    assert "result" in proxy.ask(initialize(1))
    assert proxy.settled(1, sessions) == 1
    proxy.send(INITIALIZED)
    proxy.send(line({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}))
    assert proxy.ask(request(2, "ping"))["id"] == 2  # notifications get no answer
    assert proxy.settled(1, REQUESTS, method="ping", status="ok") == 1  # recorded in order
    assert proxy.requests("notifications/initialized", "ok") == 1
    assert proxy.requests("notifications/roots/list_changed", "ok") == 1
    assert proxy.count(sessions) == 1
    time.sleep(0.1)
    assert proxy.close_client() == 0
    assert proxy.count(sessions) == 0
    durations = proxy.observed("shadowcat_session_duration_seconds")
    assert len(durations) == 1
    assert durations[0] >= 0.1


# -- malformed and unexpected messages -----------------------------------------------------------


def test_malformed_client_input_is_forwarded_and_answered_by_the_server(start_proxy):
    proxy = start_proxy()
    proxy.send(b"this is {not json\n")
    assert proxy.out.recv() == (
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}\n'
    )
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="malformed_input") == 1
    assert proxy.ask(request(1, "ping")) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert proxy.settled(1, REQUESTS, method="ping", status="ok") == 1


def test_malformed_server_output_is_forwarded_and_counted(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command)
    proxy.send(call(1, "garbage"))
    assert proxy.out.recv() == b"this is not JSON {\n"  # server lines pass unchanged
    assert proxy.recv_json()["result"] == {"after": "garbage"}
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="malformed_output") == 1
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1


def test_a_response_with_an_unknown_id_is_counted(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command)
    proxy.send(call(1, "ghost"))
    assert proxy.recv_json()["id"] == "nobody-asked"
    assert proxy.recv_json()["result"] == {"after": "ghost"}
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="unknown_id") == 1
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    # A client response nobody asked for is an unknown id too.
    proxy.send(line({"jsonrpc": "2.0", "id": "never-asked", "result": {}}))
    assert proxy.ask(call(2, "echo"))["id"] == 2
    assert proxy.settled(2, UPSTREAM_ERRORS, error_type="unknown_id") == 2


def test_too_long_client_line_is_answered_and_the_session_goes_on(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"max_line_bytes": 2048})
    proxy.send(call(9, "echo", text="x" * 5000))
    too_long = proxy.recv_json()
    assert too_long == {  # its id, read from the start of the line: the client is answered
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": -32600, "message": "message too long"},
    }
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="input_too_long") == 1
    assert proxy.settled(1, REQUESTS, method="tools/call", status="error") == 1
    assert proxy.ask(call(10, "echo"))["id"] == 10
    # A line of exactly max_line_bytes (newline included) is not too long.
    base = call(11, "echo", text="")
    exact = call(11, "echo", text="y" * (2048 - len(base)))
    assert len(exact) == 2048
    assert proxy.ask(exact)["id"] == 11
    received = server.received()
    assert b'"id":9' not in received  # the long line never reached the server
    assert received.endswith(exact)
    assert proxy.out.quiet_for(0.1) == []
    assert proxy.upstream_errors("input_too_long") == 1


def test_too_long_server_line_is_dropped(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"max_line_bytes": 2048})
    response = proxy.ask(call(1, "big"))
    assert response == {"jsonrpc": "2.0", "id": 1, "result": {"small": True}}
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="output_too_long") == 1
    assert proxy.ask(call(2, "echo"))["id"] == 2
    assert all(len(raw) <= 2048 for raw in proxy.out.seen)


# -- guards --------------------------------------------------------------------------------------


def test_a_slow_request_times_out_and_its_late_response_is_dropped(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5})
    started = time.monotonic()
    proxy.send(call(7, "slow", seconds=1.0))
    timed_out = proxy.recv_json(timeout=2)
    elapsed = time.monotonic() - started
    assert timed_out["id"] == 7
    assert error_code(timed_out) == -32001
    assert 0.45 <= elapsed <= 1.1
    # The server answers 7 at 1.0 s: that late response must not reach the client.
    assert proxy.out.quiet_for(1.25 - elapsed) == []
    assert proxy.ask(request(8, "ping"))["id"] == 8
    assert proxy.out.quiet_for(0.1) == []
    assert [json.loads(raw)["id"] for raw in proxy.out.seen] == [7, 8]
    assert proxy.settled(1, REQUESTS, method="tools/call", status="timeout") == 1
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="timeout") == 1
    assert proxy.requests("tools/call", "ok") == 0
    assert proxy.upstream_errors("unknown_id") == 0


def test_a_cancelled_request_is_recorded_as_cancelled_not_timed_out(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5})
    proxy.send(call(3, "slow", seconds=0.8))
    cancel = {"requestId": 3, "reason": "user gave up"}
    proxy.send(line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel}))
    # The demo server answers anyway: relayed as it is, no timeout answer before it.
    late = proxy.recv_json(timeout=2)
    assert late["id"] == 3
    assert late["result"]["content"][0]["text"] == "done"
    assert proxy.ask(request(4, "ping"))["id"] == 4
    assert proxy.settled(1, REQUESTS, method="tools/call", status="cancelled") == 1
    assert proxy.settled(1, REQUESTS, method="notifications/cancelled", status="ok") == 1
    assert proxy.requests("tools/call", "timeout") == 0
    assert proxy.requests("tools/call", "ok") == 0
    assert proxy.upstream_errors("unknown_id") == 0
    assert proxy.upstream_errors("timeout") == 0


def test_timeout_fires_while_the_server_is_not_reading_its_input(start_proxy):
    """The server is busy (not reading stdin) and the client's next request fills the pipe:
    the earlier request must still time out on time."""
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5})
    started = time.monotonic()
    proxy.send(call(1, "slow", seconds=2.0))
    big = "y" * 300_000  # more than a pipe holds: the proxy's write waits for the server
    proxy.send(call(2, "echo", text=big))
    first = proxy.recv_json(timeout=4)
    elapsed = time.monotonic() - started
    assert (first["id"], error_code(first)) == (1, -32001), first.get("error", first.get("id"))
    assert elapsed <= 1.2, f"the timeout answer came after {elapsed:.2f} s"
    second = proxy.recv_json(timeout=4)
    assert second["id"] == 2
    assert second["result"]["content"][0]["text"] == big
    assert proxy.out.quiet_for(0.1) == []
    assert proxy.settled(1, REQUESTS, method="tools/call", status="timeout") == 1


def test_a_server_request_reusing_a_timed_out_id_reaches_the_client(start_proxy, tmp_path):
    """JSON-RPC ids are per sender: a server's own request may carry the id of a client
    request that timed out (SDK peers both count from 0). Only a *response* with that id
    is the late answer to drop."""
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"request_timeout_secs": 0.5})
    proxy.send(call(5, "late-ask"))
    timed_out = proxy.recv_json(timeout=2)
    assert (timed_out["id"], error_code(timed_out)) == (5, -32001)
    server_request = proxy.recv_json(timeout=2)
    assert server_request == {"jsonrpc": "2.0", "id": 5, "method": "roots/list"}


def test_rate_limit_per_method(start_proxy):
    proxy = start_proxy(proxy_settings={"rate_limits": {"tools/call": 2}})
    started = time.monotonic()
    proxy.send(b"".join(call(i, "echo", text=str(i)) for i in range(10)))
    proxy.send(b"".join(request(f"p{i}", "ping") for i in range(3)))
    responses = proxy.out.recv_many(13, timeout=3)
    assert time.monotonic() - started < 1.0
    calls = [m for m in responses if isinstance(m["id"], int)]
    refused = [m for m in calls if error_code(m) == -32002]
    passed = [m for m in calls if "result" in m]
    assert len(calls) == 10
    assert len(passed) + len(refused) == 10
    assert len(passed) in (2, 3)  # a bucket of 2, plus at most a refill during the burst
    assert [m["id"] for m in passed][:2] == [0, 1]
    pings = [m for m in responses if isinstance(m["id"], str)]
    assert [m.get("result") for m in pings] == [{}, {}, {}]  # other methods unaffected
    limited = "shadowcat_rate_limit_exceeded_total"
    assert proxy.count(limited, limit_type="per_method") == len(refused)
    assert proxy.settled(len(passed), REQUESTS, method="tools/call", status="ok") == len(passed)
    errors = proxy.settled(len(refused), REQUESTS, method="tools/call", status="error")
    assert errors == len(refused)
    assert proxy.settled(3, REQUESTS, method="ping", status="ok") == 3


# -- the server's life ---------------------------------------------------------------------------


def test_server_crash_without_restart_fails_pending_and_ends_the_proxy(start_proxy):
    proxy = start_proxy()
    assert "result" in proxy.ask(initialize(1))
    crashed = proxy.ask(call(2, "crash"))
    assert crashed["id"] == 2
    assert error_code(crashed) == -32000
    proxy.thread.join(5)
    assert not proxy.thread.is_alive(), "run() should return when the server exits"
    assert proxy.exit_code == 3  # the server's status
    assert proxy.out.eof.wait(2), "the proxy should close its output"
    assert proxy.upstream_errors("exit") == 1
    assert proxy.requests("tools/call", "error") == 1
    assert proxy.count("shadowcat_active_sessions") == 0


def test_server_crash_exits_the_proxy_process_non_zero(start_proxy_process):
    proxy = start_proxy_process()
    assert "result" in proxy.ask(initialize(1))
    crashed = proxy.ask(call(2, "crash"))
    assert (crashed["id"], error_code(crashed)) == (2, -32000)
    assert proxy.out.eof.wait(5), "stdout should be closed"
    assert proxy.process.wait(5) != 0


def test_restart_replays_initialize_without_the_client_seeing_it(start_proxy, tmp_path):
    server = ScriptedServer(tmp_path)
    settings = {
        "restart": True,
        "restart_backoff_secs": 0.05,
        "breaker_failures": 2,
        "breaker_reset_secs": 0.5,
    }
    proxy = start_proxy(server.command, settings)
    assert "result" in proxy.ask(initialize(1))
    proxy.send(INITIALIZED)
    assert proxy.ask(call(2, "echo"))["result"]["tool"] == "echo"
    crashed = proxy.ask(call(3, "crash"))
    assert (crashed["id"], error_code(crashed)) == (3, -32000)
    eventually(lambda: proxy.proxy.ready, 3, message="the restarted server to be initialized")
    after = proxy.ask(call(4, "echo"))
    assert after["id"] == 4
    assert after["result"]["tool"] == "echo"
    # The client saw one answer per request of its own: no replayed initialize response.
    assert [json.loads(raw)["id"] for raw in proxy.out.seen] == [1, 2, 3, 4]
    assert proxy.out.quiet_for(0.1) == []
    received = [json.loads(raw) for raw in server.received().splitlines()]
    methods = [m["method"] for m in received]
    assert methods[:5] == [
        "initialize",
        "notifications/initialized",
        "tools/call",
        "tools/call",
        "initialize",  # replayed to the new server, then the client's notification
    ]
    assert sorted(methods[5:]) == ["notifications/initialized", "tools/call"]
    assert received[4]["params"] == received[0]["params"]
    assert received[4]["id"] != 1
    assert proxy.upstream_errors("exit") == 1
    assert proxy.requests("initialize", "ok") == 1
    assert proxy.settled(2, REQUESTS, method="tools/call", status="ok") == 2
    assert proxy.count(BREAKER, **UPSTREAM) == 0


def test_a_restarted_server_is_initialized_before_it_gets_client_requests(start_proxy, tmp_path):
    """The client keeps sending while the server restarts (each request refused while it is
    down): the new server must get the replayed initialize, then notifications/initialized,
    before any request of the client's (MCP servers refuse requests before initialization)."""
    server = ScriptedServer(tmp_path)
    settings = {"restart": True, "restart_backoff_secs": 0.05, "breaker_failures": 100}
    proxy = start_proxy(server.command, settings)
    assert "result" in proxy.ask(initialize(1))
    proxy.send(INITIALIZED)
    firsts = []
    for cycle in range(16):  # the race is lost about a third of the time: restart often
        for attempt in range(1000):  # refused while a restart is still in progress
            crash = f"crash-{cycle}-{attempt}"
            assert error_code(proxy.ask(call(crash, "crash"))) == -32000
            if f'"{crash}"'.encode() in server.received():
                break
            time.sleep(0.002)
        for attempt in range(20_000):
            answer = proxy.ask(call(f"probe-{cycle}-{attempt}", "echo"))
            if "result" in answer:
                break
        received = [json.loads(raw) for raw in server.received().splitlines()]
        crash_at = max(i for i, m in enumerate(received) if m.get("id") == crash)
        firsts.append([m.get("method") for m in received[crash_at + 1 : crash_at + 3]])
    assert all(first == ["initialize", "notifications/initialized"] for first in firsts), firsts


DEADLOCK_SERVER = r"""
import json, os, sys, time
out = sys.stdout.buffer
for raw in sys.stdin.buffer:
    message = json.loads(raw)
    if "id" not in message or "method" not in message:
        continue
    if message["method"] == "initialize":
        time.sleep(0.5)  # slow to initialize: the client's requests pile up meanwhile
        result = {"protocolVersion": "2025-06-18", "capabilities": {},
                  "serverInfo": {"name": "slow-init", "version": "1"}}
    elif message["params"]["name"] == "crash":
        os._exit(3)
    else:
        result = {"pad": "p" * 8000}
    out.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
              + b"\n")
    out.flush()
"""


def test_requests_piling_up_during_a_replayed_initialize_do_not_deadlock(start_proxy, tmp_path):
    """After a restart the proxy replays initialize; while the new server initializes, the
    client's requests fill the server's stdin. When the replay's response arrives the proxy
    sends notifications/initialized: it must not do so from the thread that reads the server's
    output, or that thread waits on the blocked writer while the server waits on it."""
    script = tmp_path / "slow_init_server.py"
    script.write_text(DEADLOCK_SERVER)
    settings = {"restart": True, "restart_backoff_secs": 0.05, "request_timeout_secs": 30}
    proxy = start_proxy([sys.executable, str(script)], settings)
    try:
        assert "result" in proxy.ask(initialize(1))
        proxy.send(INITIALIZED)
        assert error_code(proxy.ask(call(2, "crash"))) == -32000
        probes = 0
        while True:  # refused at once while the server is down; unanswered once it is up
            probes += 1
            proxy.send(call(f"probe-{probes}", "echo"))
            answers = [json.loads(raw) for raw in proxy.out.quiet_for(0.05)]
            if not answers or any("result" in answer for answer in answers):
                break
            assert probes < 100, "the server did not restart"
        # Ten requests whose answers (8 KB each) overflow the server's stdout pipe, then one
        # line longer than its stdin pipe: the proxy is still writing it when the replay's
        # response arrives.
        flood = b"".join(call(i, "echo") for i in range(10))
        flood += call("long", "echo", text="t" * 200_000)
        threading.Thread(target=proxy.send, args=(flood,), daemon=True).start()
        wanted = {*range(10), "long"}
        answered: set[Any] = set()
        deadline = time.monotonic() + 3
        while not wanted <= answered and time.monotonic() < deadline:
            answered |= {json.loads(raw)["id"] for raw in proxy.out.quiet_for(0.1)}
        assert wanted <= answered, f"{len(wanted - answered)} unanswered: the proxy is stuck"
    finally:  # unblock a stuck proxy so that it can be stopped
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if str(script) in child.cmdline():
                    child.kill()


@pytest.mark.parametrize("initialized", [False, True], ids=["no-session", "initialized"])
def test_breaker_opens_after_consecutive_crashes_and_closes_after_reset(start_proxy, initialized):
    settings = {
        "restart": True,
        "restart_backoff_secs": 0.05,
        "breaker_failures": 2,
        "breaker_reset_secs": 0.5,
    }
    proxy = start_proxy(proxy_settings=settings)
    assert proxy.count(BREAKER, **UPSTREAM) == 0
    if initialized:
        assert "result" in proxy.ask(initialize(1))
        proxy.send(INITIALIZED)
    # Crash the server twice in a row: each crash request waits for the restarted server
    # (refused with "not available" while it is down), nothing succeeds in between.
    crashes, request_id = 0, 100
    deadline = time.monotonic() + 5
    while crashes < 2:
        assert time.monotonic() < deadline, "the server did not come back to crash again"
        if initialized and crashes:
            eventually(lambda: proxy.proxy.ready, 3, message="the restarted server")
        request_id += 1
        answer = proxy.ask(call(request_id, "crash"))
        assert error_code(answer) == -32000
        if answer["error"]["message"] == "the server exited":
            crashes += 1
        else:
            time.sleep(0.01)
    opened = time.monotonic()
    assert proxy.settled(1, BREAKER, **UPSTREAM) == 1, proxy.shadowcat.states
    # While open, requests are refused at once.
    refused = proxy.ask(request("while-open", "ping"), timeout=0.3)
    assert error_code(refused) == -32000
    assert time.monotonic() - opened < 0.3
    assert proxy.upstream_errors("exit") == 2

    # After breaker_reset_secs a trial restart (half-open); a success closes the breaker.
    def trial_answered() -> bool:
        nonlocal request_id
        answer = proxy.ask(request(f"ping-{request_id}", "ping"))
        request_id += 1
        return "result" in answer

    eventually(trial_answered, 3, 0.02, message="the breaker never let a trial through")
    assert time.monotonic() - opened >= 0.45
    assert proxy.settled(0, BREAKER, **UPSTREAM) == 0
    states = proxy.shadowcat.states
    assert states[0] == "closed"
    assert states[-3:] == ["open", "half_open", "closed"], states


def test_a_batch_sent_while_the_server_is_down_is_answered(start_proxy):
    settings = {"restart": True, "restart_backoff_secs": 1.0}
    proxy = start_proxy(proxy_settings=settings)
    crashed = proxy.ask(call(1, "crash"))
    assert error_code(crashed) == -32000
    # A single request while the server is down is refused at once ...
    refused = proxy.ask(request(2, "ping"), timeout=0.5)
    assert (refused["id"], error_code(refused)) == (2, -32000)
    # ... and so must be each request of a batch: a client waits for every id it sent.
    proxy.send(line([json.loads(request(3, "ping")), json.loads(request(4, "ping"))]))
    answers = []
    for raw in proxy.out.quiet_for(0.5):  # one line with an array, or a line per answer
        payload = json.loads(raw)
        answers += payload if isinstance(payload, list) else [payload]
    assert sorted((m["id"], error_code(m)) for m in answers) == [(3, -32000), (4, -32000)]
    assert proxy.settled(3, REQUESTS, method="ping", status="error") == 3


# -- tape ----------------------------------------------------------------------------------------


def test_tape_records_every_relayed_message(start_proxy, tmp_path):
    tape_path = tmp_path / "session.tape"
    before = time.time()
    proxy = start_proxy(tape_path=tape_path)
    client_lines = [initialize(1), INITIALIZED, call(2, "echo", text="é"), call(3, "ask")]
    server_lines = []
    for data in client_lines:
        proxy.send(data)
        if data is not INITIALIZED:
            server_lines.append(proxy.out.recv())
    sampling = json.loads(server_lines[-1])
    answer = line({"jsonrpc": "2.0", "id": sampling["id"], "result": {"content": {"text": "k"}}})
    client_lines.append(answer)
    proxy.send(answer)
    server_lines.append(proxy.out.recv())
    assert proxy.close_client() == 0
    entries = [json.loads(raw) for raw in tape_path.read_bytes().splitlines()]
    assert len(entries) == 9
    for entry in entries:
        assert set(entry) == {"ts", "direction", "message"}
        assert before <= entry["ts"] <= time.time()
    # In causal order: each request before its response.
    out, back = "client_to_server", "server_to_client"
    sent = [data.decode().rstrip("\n") for data in client_lines]
    got = [data.decode().rstrip("\n") for data in server_lines]
    expected = [
        (out, sent[0]),
        (back, got[0]),
        (out, sent[1]),
        (out, sent[2]),
        (back, got[1]),
        (out, sent[3]),
        (back, got[2]),  # sampling/createMessage, from the server
        (out, sent[4]),  # the client's answer to it
        (back, got[3]),
    ]
    assert [(e["direction"], e["message"]) for e in entries] == expected
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    operations = "shadowcat_tape_operations_total"
    assert proxy.count(operations, operation="record") == 9
    assert proxy.count(operations, operation="open") == 1
    assert proxy.count(operations, operation="close") == 1
    assert proxy.observed("shadowcat_tape_size_bytes", transport="stdio") == [
        tape_path.stat().st_size
    ]


def _a_session_with_a_restart() -> None:
    proxy = InProcessProxy(DEMO, {"restart": True, "restart_backoff_secs": 0.05})
    try:
        assert "result" in proxy.ask(initialize(1))
        assert error_code(proxy.ask(call(2, "crash"))) == -32000
        eventually(lambda: proxy.proxy.ready, 3, message="the restarted server")
        assert proxy.close_client() == 0
    finally:
        proxy.teardown()
    assert proxy.out.eof.wait(2)


def test_the_proxy_closes_the_server_pipes_it_opened():
    """Each server run gets a stdin and a stdout pipe; the proxy must close both when that
    server is done (exit, restart, stop), not leave them to the garbage collector."""
    collect_unclosed_files()  # earlier tests' garbage is not this test's
    _a_session_with_a_restart()
    assert collect_unclosed_files() == []


# -- the process: endpoint, exit, children ---------------------------------------------------------


def test_ready_follows_the_initialize_response(start_proxy_process, tmp_path):
    config = "[metrics]\nbackends = ['prometheus']\n[metrics.proxy]\nname = 'demo'\n"
    proxy = start_proxy_process(config=config)
    url = proxy.metrics_url()
    assert http_get(url + "/health")[0] == 200
    status, body = http_get(url + "/ready")
    assert status == 503, body
    assert proxy.ask(request(1, "ping"))["result"] == {}
    assert http_get(url + "/ready")[0] == 503  # running, not initialized yet
    assert "result" in proxy.ask(initialize(2))
    eventually(lambda: http_get(url + "/ready")[0] == 200, 2, message="/ready to turn 200")
    initialize_counted = re.compile(
        r'^shadowcat_requests_total\{[^}]*method="initialize"[^}]*\} 1(\.0)?$', re.M
    )
    # Ready as the initialize response is relayed; recorded once the traffic pauses (1 ms).
    eventually(
        lambda: initialize_counted.search(http_get(url + "/metrics")[1].decode()),
        2,
        message="the initialize request to be recorded",
    )
    metrics = http_get(url + "/metrics")[1].decode()
    assert initialize_counted.search(metrics)
    assert re.search(r'^shadowcat_circuit_breaker_state\{upstream="demo"\} 0(\.0)?$', metrics, re.M)
    assert re.search(r"^shadowcat_active_sessions 1(\.0)?$", metrics, re.M)
    assert proxy.close_client() == 0


def test_client_eof_ends_the_proxy_and_its_server(start_proxy_process, tmp_path):
    tape_path = tmp_path / "cli.tape"
    proxy = start_proxy_process("--tape", str(tape_path))
    assert "result" in proxy.ask(initialize(1))
    assert proxy.ask(call(2, "echo", text="bye"))["result"]["content"][0]["text"] == "bye"
    server_pid = proxy.server_pid()
    started = time.monotonic()
    assert proxy.close_client() == 0
    assert time.monotonic() - started < 3
    assert proxy.out.eof.wait(2)

    def server_gone() -> bool:
        try:
            return psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert eventually(server_gone, 3, message=f"the server (pid {server_pid}) to end")
    directions = [json.loads(raw)["direction"] for raw in tape_path.read_bytes().splitlines()]
    assert directions == ["client_to_server", "server_to_client"] * 2


# -- tape of the proxy's answers, server request expiry, batch sizes --


def read_tape(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def taped(data: bytes) -> str:
    """A line as the tape holds it: its text, without the newline."""
    return data.decode().rstrip("\n")


def test_tape_records_the_timeout_answer_after_its_request(start_proxy, tmp_path):
    tape_path = tmp_path / "timeout.tape"
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3}, tape_path=tape_path)
    slow = call(1, "slow", seconds=0.8)
    proxy.send(slow)
    timed_out = proxy.out.recv(timeout=3)
    assert (json.loads(timed_out)["id"], error_code(json.loads(timed_out))) == (1, -32001)
    assert proxy.out.quiet_for(0.8) == []  # the server's late answer (at 0.8 s) is dropped
    ping = request(2, "ping")
    proxy.send(ping)
    pong = proxy.out.recv()
    assert json.loads(pong) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert proxy.close_client() == 0
    entries = read_tape(tape_path)
    # The proxy's own answer is taped as such, after the request it answers; the late
    # response it swallowed is not taped at all (no server_to_client line for id 1).
    assert [(e["direction"], e["message"]) for e in entries] == [
        ("client_to_server", taped(slow)),
        ("proxy_to_client", taped(timed_out)),
        ("client_to_server", taped(ping)),
        ("server_to_client", taped(pong)),
    ]
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    assert 0.3 <= entries[1]["ts"] - entries[0]["ts"] < 0.8
    assert proxy.count("shadowcat_tape_operations_total", operation="record") == 4


def test_tape_records_a_rate_limited_request_and_the_proxy_refusal(start_proxy, tmp_path):
    tape_path = tmp_path / "limited.tape"
    settings = {"rate_limits": {"tools/call": 0.1}}  # one token, then one every 10 s
    proxy = start_proxy(proxy_settings=settings, tape_path=tape_path)
    first, second, ping = (
        call(1, "echo", text="one"),
        call(2, "echo", text="two"),
        request(3, "ping"),
    )
    proxy.send(first)
    answered = proxy.out.recv()
    assert json.loads(answered)["result"]["content"][0]["text"] == "one"
    proxy.send(second)
    refused = proxy.out.recv()
    assert (json.loads(refused)["id"], error_code(json.loads(refused))) == (2, -32002)
    proxy.send(ping)
    pong = proxy.out.recv()
    assert json.loads(pong)["id"] == 3
    assert proxy.close_client() == 0
    entries = [(e["direction"], e["message"]) for e in read_tape(tape_path)]
    assert ("proxy_to_client", taped(refused)) in entries
    # Every message in the order it went through: the refused request too, before the
    # proxy's answer to it (an answer to a request the tape never shows cannot be replayed
    # or audited).
    assert entries == [
        ("client_to_server", taped(first)),
        ("server_to_client", taped(answered)),
        ("client_to_server", taped(second)),
        ("proxy_to_client", taped(refused)),
        ("client_to_server", taped(ping)),
        ("server_to_client", taped(pong)),
    ]
    assert proxy.count("shadowcat_rate_limit_exceeded_total", limit_type="per_method") == 1


def test_tape_records_refusals_while_the_server_is_down_and_too_long_answers(start_proxy, tmp_path):
    tape_path = tmp_path / "down.tape"
    settings = {"restart": True, "restart_backoff_secs": 1.0, "max_line_bytes": 2048}
    proxy = start_proxy(proxy_settings=settings, tape_path=tape_path)
    crash = call(1, "crash")
    proxy.send(crash)
    exited = proxy.out.recv()
    assert json.loads(exited)["error"] == {"code": -32000, "message": "the server exited"}
    ping = request(2, "ping")
    proxy.send(ping)  # the server is down (restart in 1 s): refused at once
    refused = proxy.out.recv(timeout=0.5)
    assert (json.loads(refused)["id"], error_code(json.loads(refused))) == (2, -32000)
    proxy.send(call(3, "echo", text="x" * 5000))  # over max_line_bytes: never relayed
    too_long = proxy.out.recv()
    assert json.loads(too_long) == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32600, "message": "message too long"},
    }
    assert proxy.close_client() == 0
    entries = [(e["direction"], e["message"]) for e in read_tape(tape_path)]
    assert [m for d, m in entries if d == "proxy_to_client"] == [
        taped(exited),
        taped(refused),
        taped(too_long),
    ]
    assert entries == [
        ("client_to_server", taped(crash)),
        ("proxy_to_client", taped(exited)),
        ("client_to_server", taped(ping)),  # refused, but a message the client sent
        ("proxy_to_client", taped(refused)),
        ("proxy_to_client", taped(too_long)),  # the dropped line itself is not taped
    ]


def test_an_unanswered_server_request_times_out_and_a_late_answer_is_expected(
    start_proxy, tmp_path
):
    server = ScriptedServer(tmp_path)
    proxy = start_proxy(server.command, {"request_timeout_secs": 0.3})
    proxy.send(call(5, "late-ask"))
    timed_out = proxy.recv_json(timeout=3)
    assert (timed_out["id"], error_code(timed_out)) == (5, -32001)
    roots = proxy.recv_json(timeout=3)  # the server's own request, at 1 s
    assert roots == {"jsonrpc": "2.0", "id": 5, "method": "roots/list"}
    # The client leaves it unanswered: recorded as a timeout once request_timeout_secs pass.
    eventually(
        lambda: proxy.requests("roots/list", "timeout"), 5, message="the server request to expire"
    )
    durations = proxy.observed(
        "shadowcat_request_duration_seconds", method="roots/list", status="timeout"
    )
    assert len(durations) == 1
    assert 0.3 <= durations[0] < 0.8
    # Nothing is sent to anyone in the client's name: not to the client, not to the server.
    assert proxy.out.quiet_for(0.1) == []
    assert server.received() == call(5, "late-ask")
    # The client answers late: relayed to the server as it is, not an unknown id.
    late = line({"jsonrpc": "2.0", "id": 5, "result": {"roots": []}})
    proxy.send(late)
    assert proxy.ask(call(6, "echo"))["result"]["tool"] == "echo"
    assert server.received() == call(5, "late-ask") + late + call(6, "echo")
    assert proxy.settled(1, REQUESTS, method="tools/call", status="ok") == 1
    assert proxy.upstream_errors("unknown_id") == 0
    assert proxy.requests("roots/list", "timeout") == 1
    assert proxy.requests("roots/list", "ok") == 0
    assert proxy.requests("roots/list", "error") == 0
    assert proxy.upstream_errors("timeout") == 1  # the client's request 5 only
    # Once expected, a second answer with the same id is unknown again.
    proxy.send(late)
    assert proxy.ask(request(7, "ping"))["id"] == 7
    assert proxy.settled(1, UPSTREAM_ERRORS, error_type="unknown_id") == 1


def test_a_server_request_answered_in_time_is_not_expired(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.5})
    sampling = proxy.ask(call(1, "ask", question="q"))
    assert sampling["method"] == "sampling/createMessage"
    time.sleep(0.2)
    answer = {"jsonrpc": "2.0", "id": sampling["id"], "result": {"content": {"text": "a"}}}
    assert proxy.ask(line(answer))["result"]["content"][0]["text"] == "model: a"
    assert proxy.out.quiet_for(0.6) == []  # past the deadline: nothing more
    assert proxy.settled(1, REQUESTS, method="sampling/createMessage", status="ok") == 1
    assert proxy.requests("sampling/createMessage", "timeout") == 0
    assert proxy.requests("tools/call", "timeout") == 0
    assert proxy.upstream_errors("unknown_id") == 0


def shares(data: bytes, count: int) -> list[int]:
    """A batch line's bytes shared evenly, what is left over one byte each to the first."""
    share, left_over = divmod(len(data), count)
    return [share + (index < left_over) for index in range(count)]


def test_a_batch_shares_its_bytes_among_its_requests(start_proxy):
    proxy = start_proxy()
    members = [request("a", "ping"), call("b", "echo", text="hi"), request("c", "ping")]
    batch = line([json.loads(member) for member in members])
    assert len(batch) % 3, "a length that does not divide evenly, to see the rounding"
    proxy.send(batch)
    answers = [proxy.out.recv() for _ in range(3)]  # the demo server answers line by line
    assert sorted(json.loads(raw)["id"] for raw in answers) == ["a", "b", "c"]
    a, b, c = shares(batch, 3)
    sizes = "shadowcat_request_size_bytes"
    eventually(lambda: len(proxy.observed(sizes)) >= 3, message="three sizes observed")
    assert len(proxy.observed(sizes)) == 3
    assert sum(proxy.observed(sizes)) == len(batch)  # every byte relayed, no more
    assert proxy.observed(sizes, method="ping") == [a, c]
    assert proxy.observed(sizes, method="tools/call") == [b]
    # The answers came one per line: each response records its own line's length.
    by_id = {json.loads(raw)["id"]: len(raw) for raw in answers}
    responses = "shadowcat_response_size_bytes"
    assert proxy.settled(2, REQUESTS, method="ping", status="ok") == 2
    assert sorted(proxy.observed(responses, method="ping")) == sorted([by_id["a"], by_id["c"]])
    assert proxy.observed(responses, method="tools/call") == [by_id["b"]]


BATCH_SERVER = r"""
import json, sys
out = sys.stdout.buffer
for raw in sys.stdin.buffer:
    payload = json.loads(raw)
    items = payload if isinstance(payload, list) else [payload]
    answers = [{"jsonrpc": "2.0", "id": item["id"], "result": {"n": i * "n"}}
               for i, item in enumerate(items) if "id" in item]
    if answers:
        out.write(json.dumps(answers if isinstance(payload, list) else answers[0]).encode()
                  + b"\n")
        out.flush()
"""


def test_a_batch_response_shares_its_bytes_and_notifications_take_their_share(
    start_proxy, tmp_path
):
    script = tmp_path / "batch_server.py"
    script.write_text(BATCH_SERVER)
    proxy = start_proxy([sys.executable, str(script)])
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    batch = line([json.loads(request(1, "ping")), note, json.loads(request(2, "tools/list"))])
    proxy.send(batch)
    answer = proxy.out.recv()  # one line: an array of two responses
    assert [m["id"] for m in json.loads(answer)] == [1, 2]
    assert proxy.settled(1, REQUESTS, method="tools/list", status="ok") == 1
    assert proxy.requests("ping", "ok") == 1
    assert proxy.requests("notifications/progress", "ok") == 1
    # Three messages in the request line (the notification among them), two in the answer.
    requests = "shadowcat_request_size_bytes"
    ping, note_size, tools_list = shares(batch, 3)
    assert proxy.observed(requests, method="ping") == [ping]
    assert proxy.observed(requests, method="notifications/progress") == [note_size]
    assert proxy.observed(requests, method="tools/list") == [tools_list]
    assert ping + note_size + tools_list == len(batch)
    responses = "shadowcat_response_size_bytes"
    ping_answer, tools_list_answer = shares(answer, 2)
    assert proxy.observed(responses, method="ping") == [ping_answer]
    assert proxy.observed(responses, method="tools/list") == [tools_list_answer]
    # A single message keeps its whole line.
    single = request(3, "ping")
    proxy.send(single)
    reply = proxy.out.recv()
    assert json.loads(reply)["id"] == 3
    assert proxy.settled(2, REQUESTS, method="ping", status="ok") == 2
    assert proxy.observed(requests, method="ping") == [ping, len(single)]
    assert proxy.observed(responses, method="ping") == [ping_answer, len(reply)]


def test_a_request_timeout_fires_on_its_deadline(start_proxy):
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.3})
    started = time.monotonic()
    proxy.send(call(1, "slow", seconds=2.0))
    timed_out = proxy.recv_json(timeout=3)
    elapsed = time.monotonic() - started
    assert (timed_out["id"], error_code(timed_out)) == (1, -32001)
    assert 0.3 <= elapsed <= 0.8, f"the timeout answer came after {elapsed:.3f} s"


def test_each_pending_request_times_out_on_its_own_deadline(start_proxy):
    """The server is busy with the first request; the second waits in its input pipe (the
    server has it whole): each times out request_timeout_secs after it was sent."""
    proxy = start_proxy(proxy_settings={"request_timeout_secs": 0.4})
    first_sent = time.monotonic()
    proxy.send(call(1, "slow", seconds=1.5))
    time.sleep(0.25)
    second_sent = time.monotonic()
    proxy.send(call(2, "echo", text="queued"))
    first = proxy.recv_json(timeout=3)
    first_at = time.monotonic()
    second = proxy.recv_json(timeout=3)
    second_at = time.monotonic()
    assert (first["id"], error_code(first)) == (1, -32001)
    assert (second["id"], error_code(second)) == (2, -32001)
    assert 0.4 <= first_at - first_sent <= 0.7, first_at - first_sent
    assert 0.4 <= second_at - second_sent <= 0.7, second_at - second_sent
    assert second_at - first_at >= 0.15  # not expired together with the first
    assert proxy.settled(2, REQUESTS, method="tools/call", status="timeout") == 2
    assert proxy.upstream_errors("timeout") == 2


DEADLINE_SERVER = r"""
import json, sys, time
out = sys.stdout.buffer
for raw in sys.stdin.buffer:
    message = json.loads(raw)
    if "id" not in message or "method" not in message:
        continue
    delay = message["params"]["arguments"]["delay"]
    time.sleep(delay)  # then answer: just before, at or just after the proxy's deadline
    out.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"delay": delay}})
              .encode() + b"\n")
    out.flush()
"""


def test_a_response_arriving_just_before_the_deadline_is_the_only_answer(start_proxy, tmp_path):
    """A response the server sends just before its request's deadline is relayed at once
    and recorded a millisecond later: the timeout must not fire in between, or the client
    gets two answers for one id (the response, then -32001)."""
    script = tmp_path / "deadline_server.py"
    script.write_text(DEADLINE_SERVER)
    timeout = 0.05
    proxy = start_proxy([sys.executable, str(script)], {"request_timeout_secs": timeout})
    rounds = 40
    answers: list[dict[str, Any]] = []
    for i in range(rounds):  # delays from 3 ms before the deadline to 1 ms after it
        proxy.send(call(i, "answer", delay=timeout - 0.003 + i * 0.0001))
        while not any(m["id"] == i for m in answers):
            answers.append(proxy.recv_json(timeout=3))
        time.sleep(0.005)  # the server is done with it (a late answer is dropped)
    answers += [json.loads(raw) for raw in proxy.out.quiet_for(0.3)]
    ids = Counter(m["id"] for m in answers)
    twice = {
        i: [m.get("result", m.get("error")) for m in answers if m["id"] == i]
        for i, n in ids.items()
        if n > 1
    }
    assert not twice, f"{len(twice)} of {rounds} requests answered twice: {twice}"
    assert sorted(ids) == list(range(rounds))
    ok = sum("result" in m for m in answers)
    assert proxy.settled(ok, REQUESTS, method="tools/call", status="ok") == ok
    assert proxy.requests("tools/call", "timeout") == rounds - ok
    assert proxy.upstream_errors("unknown_id") == 0


# -- what relaying costs the process -------------------------------------------------------------


def minor_page_faults(pid: int) -> int:
    """The process's minor page faults so far (field 10 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_relaying_a_message_does_not_fault_in_fresh_memory(start_proxy_process):
    """Each read once allocated a 256 KiB buffer, which the C allocator maps and unmaps
    every time: four page faults per request, on a virtual machine about 90 µs of a
    round trip. Relaying must reuse memory, so that faults do not grow with the traffic."""
    proxy = start_proxy_process()
    assert "result" in proxy.ask(initialize(1))
    for number in range(2, 52):  # warm up: imports, caches, the first allocations
        assert "result" in proxy.ask(call(number, "echo", text="warm"))
    before = minor_page_faults(proxy.process.pid)
    count = 500
    for number in range(1000, 1000 + count):
        assert proxy.ask(call(number, "echo", text="x" * 200))["id"] == number
    faults = minor_page_faults(proxy.process.pid) - before
    assert faults < count // 10, f"{faults} page faults for {count} requests"
