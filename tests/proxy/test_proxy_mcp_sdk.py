"""``metricsfacade proxy`` between real MCP peers, each side a real process.

- The Python ``mcp`` SDK client talks through the proxy to an SDK server (``MCPServer``,
  written to ``tmp_path``) and to the reference ``mcp-server-everything``: the client gets the
  right results, the proxy's ``/metrics`` (read while the session is open) count exactly the
  traffic the test made, and the tape holds every message once the proxy has exited.
- A raw client (subprocess pipes, no SDK) sends odd but valid bytes (spacing, key order,
  unicode escapes, CRLF, batches, colliding ids, a long line, non-JSON) to a tee server that
  records what it receives and sends: both directions arrive byte for byte.
- Proxy bugs found here are pinned by tests that fail until they are fixed (their docstrings
  start with "BUG"): the tape's order, and client cancellations counted as timeouts.

Each test needs about 1-3 s (the cancellation test waits out a 6 s request timeout). The
server-everything test is marked ``sink``: it skips when the npm package is not installed,
or fails under ``REQUIRE_REAL_SINKS=1`` (scripts/install-test-deps installs it).
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import support
from support import eventually, eventually_async, require_module, sinks

require_module("mcp_types")
require_module("mcp")
require_module("prometheus_client")
require_module("anyio")
import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import mcp_types as types  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import PROCESS_TERMINATION_TIMEOUT, stdio_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

# Sampling, roots and logging are deprecated in the 2026 protocol; the SDK still speaks them
# on the 2025-11-25 handshake these tests use, and warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")

C2S, S2C = "client_to_server", "server_to_client"
TRANSPORT = "stdio"
UPSTREAM = "upstream"  # the default [metrics.proxy] name
REQUEST_LABELS = ("method", "transport", "status")
SESSION_TIMEOUT_SECS = 40.0
METRICS_WAIT_SECS = 5.0  # the proxy records within 250 ms; generous for a loaded machine
LINE_TIMEOUT_SECS = 10.0
ROOT_URI = "file:///srv/proxy-root"  # the client's one root

# -- the peers -------------------------------------------------------------------------------

SDK_SERVER = '''\
"""An MCP server on the Python SDK (mcp 2.x: FastMCP is mcp.server.mcpserver.MCPServer)."""
import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError

server = MCPServer("proxy-test-server", version="1.2.3")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def explode(reason: str) -> str:
    """Raises: the SDK answers with a result flagged isError, not a JSON-RPC error."""
    raise ValueError(f"exploded: {reason}")


@server.tool()
def refuse() -> str:
    """Raises MCPError: the SDK answers with a JSON-RPC error."""
    raise MCPError(-32042, "refused on purpose")


@server.tool()
async def ask_llm(question: str, ctx: Context) -> str:
    """Asks the client to sample (a server-to-client request)."""
    result = await ctx.session.create_message(
        [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=question))],
        max_tokens=16,
    )
    return f"llm said: {result.content.text}"


@server.tool()
async def list_client_roots(ctx: Context) -> str:
    """Asks the client for its roots (a server-to-client request)."""
    result = await ctx.session.list_roots()
    return " ".join(str(root.uri) for root in result.roots)


@server.tool()
async def shout(text: str, ctx: Context) -> str:
    """Logs to the client (a server-to-client notification), then answers."""
    await ctx.info(f"shouting {text}")
    return text.upper()


@server.tool()
async def slow(secs: float) -> str:
    """Answers after secs seconds (or never, when the client cancels it first)."""
    await anyio.sleep(secs)
    return "done"


@server.resource("test://greeting")
def greeting() -> str:
    return "hello from the resource"


@server.prompt()
def review(code: str) -> str:
    return f"Please review: {code}"


if __name__ == "__main__":
    server.run()
'''

TEE_SERVER = r'''"""Records every line it reads (argv[1]) and writes (argv[2]) byte for
byte, answering after argv[3] seconds with odd but valid JSON: spacing, key order, escapes,
raw UTF-8."""
import json
import sys
import time

received = open(sys.argv[1], "ab", buffering=0)
sent = open(sys.argv[2], "ab", buffering=0)
delay = float(sys.argv[3])
out = sys.stdout.buffer
SERVER_REQUEST_ID = 11  # the same id as the client's pending request that triggers it


def dump(value):
    return json.dumps(value, ensure_ascii=False).encode()


def send(data):
    sent.write(data)
    out.write(data)
    out.flush()


def response(message, line):
    message_id = dump(message["id"])
    params = message.get("params")
    if isinstance(params, dict) and params.get("name") == "fail":
        return (b'{"jsonrpc":"2.0","id":' + message_id
                + b',"error":{"code":-32000,"message":"failed on purpose","data":{"\\u00e9":1}}}')
    return (b'{ "result" : {"method" :' + dump(message["method"]) + b', "got":'
            + dump(line.decode("utf-8")) + b', "caf\\u00e9":"\xc3\xa9\\ud83d\\ude00 \\"q\\""}'
            + b',  "id":' + message_id + b', "jsonrpc":"2.0"}')


trigger = None
for line in sys.stdin.buffer:
    received.write(line)
    try:
        message = json.loads(line)
    except ValueError:
        continue  # not JSON (or not UTF-8): recorded, not answered
    if delay:
        time.sleep(delay)
    if isinstance(message, list):
        parts = [response(m, line) for m in message if "method" in m and "id" in m]
        if parts:
            send(b"[" + b" , ".join(parts) + b"]\n")
    elif "method" not in message:  # the client answers our request
        if trigger is not None and message.get("id") == SERVER_REQUEST_ID:
            send(b'{"jsonrpc":"2.0","id":' + dump(trigger["id"])
                 + b',"result":{"client said":' + dump(message.get("result")) + b"}}\n")
            trigger = None
    elif "id" not in message:
        pass  # a notification
    elif (message.get("params") or {}).get("name") == "trigger":
        trigger = message
        send(b'{"jsonrpc":"2.0","method":"notifications/message",'
             b'"params":{"level":"info","data":"d\\u00e9j\\u00e0 vu \xe2\x9c\x93"}}\n')
        send(b'{"jsonrpc":"2.0","id":' + dump(SERVER_REQUEST_ID)
             + b',"method":"sampling/createMessage","params":{"messages":[],"maxTokens":1}}\n')
    else:  # a ping's answer ends with blanks and CRLF, which are JSON whitespace too
        send(response(message, line) + (b" \t\r\n" if message["method"] == "ping" else b"\n"))
'''

# -- what the test made happen, and what the proxy should have counted -----------------------


@dataclass
class Ledger:
    """The messages a test exchanged, by direction, kind and method."""

    #: (direction of the request, method, "ok"/"error")
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (direction, method)
    notifications: Counter[tuple[str, str]] = field(default_factory=Counter)

    def request(self, method: str, status: str = "ok", direction: str = C2S) -> None:
        self.requests[(direction, method, status)] += 1

    def notification(self, method: str, direction: str = C2S) -> None:
        self.notifications[(direction, method)] += 1

    @property
    def message_count(self) -> int:
        return 2 * sum(self.requests.values()) + sum(self.notifications.values())

    def expected_metrics(self, tape_lines: int | None = None) -> dict[str, Any]:
        """What ``traffic_metrics`` should read on the proxy's endpoint (``tape_lines``:
        the lines taped so far, by default one per message)."""
        requests: Counter[tuple[str, str, str]] = Counter()
        request_sizes: Counter[tuple[str, str]] = Counter()
        response_sizes: Counter[tuple[str, str]] = Counter()
        for (_, method, status), count in self.requests.items():
            requests[(method, TRANSPORT, status)] += count
            request_sizes[(method, TRANSPORT)] += count
            response_sizes[(method, TRANSPORT)] += count
        for (_, method), count in self.notifications.items():
            requests[(method, TRANSPORT, "ok")] += count
            request_sizes[(method, TRANSPORT)] += count
        client_requests = sum(n for (d, _, _), n in self.requests.items() if d == C2S)
        return {
            "shadowcat_requests_total": dict(requests),
            "shadowcat_request_duration_seconds_count": dict(requests),
            "shadowcat_request_size_bytes_count": dict(request_sizes),
            "shadowcat_response_size_bytes_count": dict(response_sizes),
            "shadowcat_proxy_latency_seconds_count": {(UPSTREAM,): client_requests},
            # from the client's initialize to the proxy's exit
            "shadowcat_active_sessions": {
                (): 1 if requests[("initialize", TRANSPORT, "ok")] else 0
            },
            "shadowcat_session_duration_seconds_count": {(): 0},
            "shadowcat_tape_operations_total": {
                ("open",): 1,
                ("record",): self.message_count if tape_lines is None else tape_lines,
            },
        }

    def expected_tape(self) -> Counter[tuple[str, str, str]]:
        """(direction, kind, method) of every message, as ``tape_census`` counts them."""
        census: Counter[tuple[str, str, str]] = Counter()
        for (direction, method, status), count in self.requests.items():
            answer = S2C if direction == C2S else C2S
            census[(direction, "request", method)] += count
            census[(answer, "result" if status == "ok" else "error", method)] += count
        for (direction, method), count in self.notifications.items():
            census[(direction, "notification", method)] += count
        return census


# -- the proxy's endpoint --------------------------------------------------------------------

#: sample name -> the labels keying it in ``traffic_metrics``
TRAFFIC_SAMPLES: dict[str, tuple[str, ...]] = {
    "shadowcat_requests_total": ("method", "transport", "status"),
    "shadowcat_request_duration_seconds_count": ("method", "transport", "status"),
    "shadowcat_request_size_bytes_count": ("method", "transport"),
    "shadowcat_response_size_bytes_count": ("method", "transport"),
    "shadowcat_proxy_latency_seconds_count": ("upstream",),
    "shadowcat_active_sessions": (),
    "shadowcat_session_duration_seconds_count": (),
    "shadowcat_tape_operations_total": ("operation",),
}


class Scrape:
    """One read of /metrics, parsed with prometheus-client's parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def series(self, name: str, keys: Iterable[str]) -> dict[tuple[str, ...], float]:
        keys = tuple(keys)
        found: dict[tuple[str, ...], float] = {}
        for sample_name, labels, value in self.samples:
            if sample_name == name:
                assert set(labels) == set(keys), f"{name} has labels {labels}, expected {keys}"
                found[tuple(labels[key] for key in keys)] = value
        return found

    def value(self, name: str, **labels: str) -> float:
        matches = [
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and sample_labels == labels
        ]
        assert len(matches) == 1, f"expected one {name}{labels}, found {matches}\n{self.text}"
        return matches[0]


def traffic_metrics(scrape: Scrape) -> dict[str, Any]:
    """The samples that count traffic, shaped like ``Ledger.expected_metrics()``. Empty size
    histograms are left out: a method's request and response sizes are declared together,
    so a notification's method has an empty response size histogram."""
    found = {name: scrape.series(name, keys) for name, keys in TRAFFIC_SAMPLES.items()}
    for name in ("shadowcat_request_size_bytes_count", "shadowcat_response_size_bytes_count"):
        found[name] = {key: count for key, count in found[name].items() if count}
    return found


def scrape_metrics(url: str) -> Scrape:
    return Scrape(support.scrape(url))


def poll_metrics(url: str, expected: Callable[[], dict[str, Any]]) -> tuple[Scrape, dict[str, Any]]:
    """Scrape until the traffic metrics equal ``expected()`` (or METRICS_WAIT_SECS pass);
    returns the last scrape and what it was compared with."""
    last: list[tuple[Scrape, dict[str, Any]]] = []

    def matches() -> bool:
        last.append((scrape_metrics(url), expected()))
        return traffic_metrics(last[-1][0]) == last[-1][1]

    eventually(matches, METRICS_WAIT_SECS, 0.05, fail=False)
    return last[-1]


async def poll_metrics_async(
    url: str, expected: Callable[[], dict[str, Any]]
) -> tuple[Scrape, dict[str, Any]]:
    """``poll_metrics`` from an event loop: ``expected()`` runs on the loop, where the
    session's callbacks update the ledger."""
    wanted: dict[str, Any] = {}

    def matches(scrape: Scrape) -> bool:
        wanted.clear()
        wanted.update(expected())
        return traffic_metrics(scrape) == wanted

    return await poll_until_async(url, matches), wanted


async def poll_until_async(url: str, predicate: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until ``predicate(scrape)`` (or METRICS_WAIT_SECS pass); the last scrape."""
    last: list[Scrape] = []

    async def holds() -> bool:
        last.append(await anyio.to_thread.run_sync(scrape_metrics, url))
        return predicate(last[-1])

    await eventually_async(holds, METRICS_WAIT_SECS, 0.05, fail=False)
    return last[-1]


def check_traffic_metrics(scrape: Scrape, wanted: dict[str, Any]) -> None:
    """Counts equal the ledger's; latency small; no upstream error; breaker closed."""
    assert traffic_metrics(scrape) == wanted
    assert scrape.series("shadowcat_upstream_errors_total", ("upstream", "error_type")) == {}
    assert scrape.value("shadowcat_circuit_breaker_state", upstream=UPSTREAM) == 0
    latency = "shadowcat_proxy_latency_seconds"
    count = scrape.value(f"{latency}_count", upstream=UPSTREAM)
    assert count > 0
    assert scrape.value(f"{latency}_sum", upstream=UPSTREAM) / count < 0.02
    # every request: the proxy added under 100 ms (its own time, the server's excluded)
    assert scrape.value(f"{latency}_bucket", upstream=UPSTREAM, le="0.1") == count


def endpoint(url: str, path: str) -> str:
    return urllib.parse.urljoin(url, path)


# -- the tape --------------------------------------------------------------------------------


@dataclass
class TapeEntry:
    ts: float
    direction: str
    message: str

    @property
    def size(self) -> int:
        """The line's size on the wire (the tape drops its newline)."""
        return len(self.message.encode()) + 1


def read_tape(path: Path, started: float, ended: float) -> list[TapeEntry]:
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        entry = json.loads(line)
        assert set(entry) == {"ts", "direction", "message"}, f"tape line {number}: {entry}"
        assert entry["direction"] in (C2S, S2C), f"tape line {number}: {entry}"
        assert isinstance(entry["message"], str), f"tape line {number}: {entry}"
        assert started <= entry["ts"] <= ended, f"tape line {number}: {entry}"
        entries.append(TapeEntry(entry["ts"], entry["direction"], entry["message"]))
    return entries


@dataclass
class TapeMessage:
    entry: TapeEntry
    kind: str  # request, notification, result, error
    method: str  # a response's: its request's method
    payload: dict[str, Any]


def classify_tape(entries: list[TapeEntry]) -> list[TapeMessage]:
    """Each entry (one JSON-RPC message each in these tests) with its kind and method; a
    response takes its request's method (ids are per sender: a request from the server and
    one from the client may share an id)."""
    methods: dict[tuple[str, str], str] = {}
    for entry in entries:
        payload = json.loads(entry.message)
        if "method" in payload and "id" in payload:
            key = (entry.direction, json.dumps(payload["id"]))
            assert key not in methods, f"a request id used twice: {entry}"
            methods[key] = payload["method"]
    classified = []
    for entry in entries:
        payload = json.loads(entry.message)
        if "method" in payload:
            kind = "request" if "id" in payload else "notification"
            method = payload["method"]
        else:
            kind = "error" if "error" in payload else "result"
            requester = C2S if entry.direction == S2C else S2C
            method = methods.pop((requester, json.dumps(payload["id"])), "(no request)")
        classified.append(TapeMessage(entry, kind, method, payload))
    return classified


def tape_census(messages: list[TapeMessage]) -> Counter[tuple[str, str, str]]:
    return Counter((m.entry.direction, m.kind, m.method) for m in messages)


def check_sizes_match_tape(scrape: Scrape, messages: list[TapeMessage]) -> None:
    """The size histograms' sums are the byte sizes of the taped lines, method by method."""
    request_sizes: Counter[tuple[str, str]] = Counter()
    response_sizes: Counter[tuple[str, str]] = Counter()
    for message in messages:
        sizes = request_sizes if message.kind in ("request", "notification") else response_sizes
        sizes[(message.method, TRANSPORT)] += message.entry.size
    for name, sizes in (
        ("shadowcat_request_size_bytes_sum", request_sizes),
        ("shadowcat_response_size_bytes_sum", response_sizes),
    ):
        found = scrape.series(name, ("method", "transport"))
        assert {key: total for key, total in found.items() if total} == {
            key: float(total) for key, total in sizes.items()
        }, name


def response_to(messages: list[TapeMessage], request: dict[str, Any]) -> dict[str, Any]:
    """The taped response to the taped request ``request`` (a client request)."""
    for message in messages:
        if (
            message.kind in ("result", "error")
            and message.entry.direction == S2C
            and message.payload["id"] == request["id"]
            and message.method == request["method"]
        ):
            return message.payload
    raise AssertionError(f"no response to {request} in the tape")


def taped_requests(messages: list[TapeMessage], method: str) -> list[dict[str, Any]]:
    return [m.payload for m in messages if m.kind == "request" and m.method == method]


# -- the SDK client --------------------------------------------------------------------------


def text_of(content: Any) -> str:
    blocks = content if isinstance(content, list) else [content]
    return "".join(block.text for block in blocks if isinstance(block, types.TextContent))


class SdkClient:
    """The SDK client's callbacks: they answer the server's requests (sampling refuses the
    question "refuse") and enter what they see in the ledger, with the client's own calls."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.sampled: list[str] = []
        self.logged: list[str] = []
        self.stream_errors: list[Exception] = []
        self.roots_asked = anyio.Event()
        self.scrape: Scrape | None = None
        self.wanted: dict[str, Any] = {}

    def session_options(self) -> dict[str, Any]:
        return {
            "sampling_callback": self.sampling,
            "list_roots_callback": self.list_roots,
            "message_handler": self.on_message,
            "logging_callback": self.on_log,
        }

    async def sampling(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        question = text_of(params.messages[0].content)
        self.sampled.append(question)
        if question == "refuse":
            self.ledger.request("sampling/createMessage", "error", direction=S2C)
            return types.ErrorData(code=types.INVALID_REQUEST, message="the user said no")
        self.ledger.request("sampling/createMessage", direction=S2C)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"answer to {question}"),
            model="test-model",
        )

    async def list_roots(self, context: Any) -> types.ListRootsResult:
        self.ledger.request("roots/list", direction=S2C)
        self.roots_asked.set()
        return types.ListRootsResult(roots=[types.Root.model_validate({"uri": ROOT_URI})])

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.stream_errors.append(message)
        else:  # every server notification (logged ones too)
            self.ledger.notification(message.method, direction=S2C)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logged.append(str(params.data))

    async def initialize(self, session: ClientSession) -> types.InitializeResult:
        result = await session.initialize()
        self.ledger.request("initialize")
        self.ledger.notification("notifications/initialized")
        return result

    async def call(self, session: ClientSession, tool: str, **arguments: Any) -> Any:
        """A tool call that succeeds at the JSON-RPC level (its result may say isError)."""
        result = await session.call_tool(tool, arguments)
        self.ledger.request("tools/call")
        return result

    async def failing_call(self, session: ClientSession, tool: str, **arguments: Any) -> MCPError:
        """A tool call answered with a JSON-RPC error."""
        with pytest.raises(MCPError) as failed:
            await session.call_tool(tool, arguments)
        self.ledger.request("tools/call", "error")
        return failed.value

    async def browse(
        self, session: ClientSession, prompt: str, **arguments: str
    ) -> tuple[Any, ...]:
        """resources/list, resources/read of the first, prompts/list, prompts/get, ping."""
        resources = await session.list_resources()
        self.ledger.request("resources/list")
        assert resources.resources
        read = await session.read_resource(str(resources.resources[0].uri))
        self.ledger.request("resources/read")
        prompts = await session.list_prompts()
        self.ledger.request("prompts/list")
        got = await session.get_prompt(prompt, arguments or None)
        self.ledger.request("prompts/get")
        await session.send_ping()
        self.ledger.request("ping")
        return resources, read, prompts, got

    async def read_metrics(self, url: str) -> None:
        """Poll /metrics until it shows the ledger's traffic; keep the last scrape."""
        self.scrape, self.wanted = await poll_metrics_async(url, self.ledger.expected_metrics)


@dataclass
class SdkRun:
    """One proxied session of the SDK client: what the test needs once the proxy exited."""

    tape: Path
    log: sinks.StderrLog
    started: float = 0.0
    ended: float = 0.0
    #: how long the transport took to close after the session (the proxy must exit by itself)
    exit_secs: float = math.inf


def run_sdk_session(
    tmp_path: Path,
    server: list[str],
    client: SdkClient,
    body: Callable[[ClientSession, str], Any],
    config: Path | None = None,
) -> SdkRun:
    """Runs the SDK client through the proxy in front of ``server``; ``body(session, url)``
    talks to it while it is open (``url``: the proxy's /metrics)."""
    tape = tmp_path / "tape.jsonl"
    log, errlog = sinks.StderrLog.pipe()
    run = SdkRun(tape, log)
    command = sinks.proxy_command(server, tape=tape, config=config)
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=sinks.clean_environ(), cwd=str(tmp_path)
    )

    async def session_run() -> None:
        with anyio.fail_after(SESSION_TIMEOUT_SECS):
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write, **client.session_options()) as session:
                    url = await anyio.to_thread.run_sync(log.metrics_url)
                    await body(session, url)
                closing = time.monotonic()
            run.exit_secs = time.monotonic() - closing

    run.started = time.time()
    try:
        anyio.run(session_run)
    finally:
        errlog.close()
    assert log.wait_closed(), f"the proxy or its server still runs; stderr:\n{log.text()}"
    run.ended = time.time()
    assert client.stream_errors == []
    # The proxy exited by itself when the client closed its stdin (the SDK kills what
    # outlives PROCESS_TERMINATION_TIMEOUT), so it closed its tape.
    assert run.exit_secs < PROCESS_TERMINATION_TIMEOUT, log.text()
    return run


# -- 1a: the SDK client and the SDK server ---------------------------------------------------


async def exercise_sdk_server(client: SdkClient, session: ClientSession, url: str) -> None:
    init = await client.initialize(session)
    assert (init.server_info.name, init.server_info.version) == ("proxy-test-server", "1.2.3")
    tools = await session.list_tools()
    client.ledger.request("tools/list")
    assert {tool.name for tool in tools.tools} == {
        "add",
        "explode",
        "refuse",
        "ask_llm",
        "list_client_roots",
        "shout",
        "slow",
    }
    for a, b in ((2, 3), (40, 2)):
        result = await client.call(session, "add", a=a, b=b)
        assert not result.is_error
        assert result.structured_content == {"result": a + b}
        assert text_of(result.content) == str(a + b)

    # A raising tool is a *successful* JSON-RPC response whose result says isError.
    result = await client.call(session, "explode", reason="boom")
    assert result.is_error
    assert "explode" in text_of(result.content)
    # MCPError raised in a tool is a JSON-RPC error response.
    refused = await client.failing_call(session, "refuse")
    assert (refused.code, refused.message) == (-32042, "refused on purpose")

    result = await client.call(session, "ask_llm", question="six times seven?")
    assert text_of(result.content) == "llm said: answer to six times seven?"
    # The client refuses to sample: its error response fails the tool call.
    await client.failing_call(session, "ask_llm", question="refuse")
    assert client.sampled == ["six times seven?", "refuse"]

    result = await client.call(session, "list_client_roots")
    assert text_of(result.content) == ROOT_URI
    result = await client.call(session, "shout", text="héllo ✓")
    assert text_of(result.content) == "HÉLLO ✓"
    assert client.logged == ["shouting héllo ✓"]

    await session.send_roots_list_changed()
    client.ledger.notification("notifications/roots/list_changed")

    resources, read, prompts, prompt = await client.browse(session, "review", code="x = 1")
    assert [str(r.uri) for r in resources.resources] == ["test://greeting"]
    assert [c.text for c in read.contents] == ["hello from the resource"]
    assert [p.name for p in prompts.prompts] == ["review"]
    assert [text_of(m.content) for m in prompt.messages] == ["Please review: x = 1"]

    status, _, ready = await anyio.to_thread.run_sync(sinks.http_get, endpoint(url, "/ready"))
    assert status == 200, ready
    await client.read_metrics(url)


SDK_SERVER_REQUESTS = {
    ("initialize", TRANSPORT, "ok"): 1,
    ("notifications/initialized", TRANSPORT, "ok"): 1,
    ("tools/list", TRANSPORT, "ok"): 1,
    ("tools/call", TRANSPORT, "ok"): 6,
    ("tools/call", TRANSPORT, "error"): 2,
    ("sampling/createMessage", TRANSPORT, "ok"): 1,
    ("sampling/createMessage", TRANSPORT, "error"): 1,
    ("roots/list", TRANSPORT, "ok"): 1,
    ("notifications/message", TRANSPORT, "ok"): 1,
    ("notifications/roots/list_changed", TRANSPORT, "ok"): 1,
    ("resources/list", TRANSPORT, "ok"): 1,
    ("resources/read", TRANSPORT, "ok"): 1,
    ("prompts/list", TRANSPORT, "ok"): 1,
    ("prompts/get", TRANSPORT, "ok"): 1,
    ("ping", TRANSPORT, "ok"): 1,
}


def test_sdk_client_and_sdk_server_through_the_proxy(tmp_path: Path) -> None:
    server_script = tmp_path / "sdk_server.py"
    server_script.write_text(SDK_SERVER)
    client = SdkClient()
    run = run_sdk_session(
        tmp_path,
        [sys.executable, str(server_script)],
        client,
        lambda session, url: exercise_sdk_server(client, session, url),
    )

    # While the session was open, the metrics counted exactly that traffic.
    assert client.wanted["shadowcat_requests_total"] == SDK_SERVER_REQUESTS  # the ledger itself
    assert client.scrape is not None
    check_traffic_metrics(client.scrape, client.wanted)

    # Once the proxy exited: every message is on the tape, sized as the metrics say.
    messages = classify_tape(read_tape(run.tape, run.started, run.ended))
    assert tape_census(messages) == client.ledger.expected_tape()
    assert len(messages) == client.ledger.message_count
    check_sizes_match_tape(client.scrape, messages)
    calls = taped_requests(messages, "tools/call")
    assert [c["params"]["name"] for c in calls] == [
        "add",
        "add",
        "explode",
        "refuse",
        "ask_llm",
        "ask_llm",
        "list_client_roots",
        "shout",
    ]
    assert response_to(messages, calls[1])["result"]["structuredContent"] == {"result": 42}
    assert response_to(messages, calls[3])["error"] == {
        "code": -32042,
        "message": "refused on purpose",
    }
    sampling_request, _ = taped_requests(messages, "sampling/createMessage")
    assert sampling_request["params"]["messages"][0]["content"]["text"] == "six times seven?"
    (initialize,) = taped_requests(messages, "initialize")
    assert initialize["params"]["capabilities"]["sampling"] == {}


#: The proxy's request timeout in the cancellation test: the SDK server must answer
#: initialize within it (it starts in about 2 s), and the test waits it out.
CANCEL_TEST_TIMEOUT_SECS = 6.0


def test_a_request_the_client_cancels_is_counted_as_cancelled(tmp_path: Path) -> None:
    """BUG: a request the client cancels is counted as a timeout, and answered by the proxy.

    When a request times out on the SDK client's side, the client sends
    ``notifications/cancelled {"requestId": N}``; the SDK server, as the MCP spec asks, then
    never answers request N. core.py never looks at ``notifications/cancelled``: request N
    stays in ``self._pending`` until ``request_timeout_secs``, when ``_expire_requests``
    answers the client ``-32001 upstream timed out`` for a request it has given up, finishes
    it with status ``timeout`` and counts ``shadowcat_upstream_errors_total{error_type=
    "timeout"}``: the server is blamed for the client's decision. Expected: status
    ``cancelled`` (in the catalog's stdio statuses, and never produced by the proxy), no
    upstream error, no answer from the proxy. Fix: in ``_track_from_client``, for a
    ``notifications/cancelled`` notification, pop ``params.requestId`` (as ``jsonrpc._key``
    makes keys) from ``_pending``, ``finish(CANCELLED)`` its tracker, and swallow a late
    response to it (``_swallow``) as the spec lets the server still send one; the same for a
    server's cancellation of its own request in ``_server_requests``.
    """
    server_script = tmp_path / "sdk_server.py"
    server_script.write_text(SDK_SERVER)
    config = tmp_path / "proxy.toml"
    config.write_text(f"[metrics.proxy]\nrequest_timeout_secs = {CANCEL_TEST_TIMEOUT_SECS}\n")
    client = SdkClient()
    scrapes: list[Scrape] = []

    async def body(session: ClientSession, url: str) -> None:
        await client.initialize(session)
        await session.list_tools()  # else the SDK lists them itself before its first call
        with pytest.raises(MCPError, match="timed out"):
            await session.call_tool("slow", {"secs": 60}, read_timeout_seconds=0.3)
        # the proxy's timeout would expire now: wait it out, then use the session again
        await anyio.sleep(CANCEL_TEST_TIMEOUT_SECS + 0.5)
        result = await client.call(session, "add", a=1, b=2)
        assert result.structured_content == {"result": 3}
        scrapes.append(
            await poll_until_async(
                url,
                lambda scrape: (
                    scrape.series("shadowcat_requests_total", REQUEST_LABELS).get(
                        ("tools/call", TRANSPORT, "ok")
                    )
                    == 1
                ),
            )
        )

    run = run_sdk_session(
        tmp_path,
        [sys.executable, str(server_script)],
        client,
        body,
        config=config,
    )

    # The server honoured the cancellation: nothing answered the slow call.
    messages = classify_tape(read_tape(run.tape, run.started, run.ended))
    slow_call, add_call = taped_requests(messages, "tools/call")
    assert [slow_call["params"]["name"], add_call["params"]["name"]] == ["slow", "add"]
    (cancel,) = [m.payload for m in messages if m.method == "notifications/cancelled"]
    assert cancel["params"]["requestId"] == slow_call["id"]
    answered = [m.payload["id"] for m in messages if m.kind in ("result", "error")]
    assert slow_call["id"] not in answered
    assert add_call["id"] in answered

    (scrape,) = scrapes
    requests = scrape.series("shadowcat_requests_total", REQUEST_LABELS)
    errors = scrape.series("shadowcat_upstream_errors_total", ("upstream", "error_type"))
    assert (requests, errors) == (
        {
            ("initialize", TRANSPORT, "ok"): 1,
            ("notifications/initialized", TRANSPORT, "ok"): 1,
            ("tools/list", TRANSPORT, "ok"): 1,
            ("tools/call", TRANSPORT, "cancelled"): 1,
            ("notifications/cancelled", TRANSPORT, "ok"): 1,
            ("tools/call", TRANSPORT, "ok"): 1,
        },
        {},
    )


# -- 1b: the SDK client and the reference server ---------------------------------------------


def pick(available: Iterable[str], *candidates: str) -> str:
    """The first candidate the server offers (names changed across server releases)."""
    names = set(available)
    for name in candidates:
        if name in names:
            return name
    raise AssertionError(f"none of {candidates} in {sorted(names)}")


ECHOED = 'héllo ✓ 😀 "quoted" \\ back'


async def exercise_server_everything(client: SdkClient, session: ClientSession, url: str) -> None:
    init = await client.initialize(session)
    assert init.server_info.name == "mcp-servers/everything"
    # Once initialized, the server asks for the client's roots, then logs about them.
    with anyio.fail_after(10):
        await client.roots_asked.wait()
        await eventually_async(
            lambda: any("root" in text.lower() for text in client.logged), 10, 0.02
        )

    tools = await session.list_tools()
    client.ledger.request("tools/list")
    names = [tool.name for tool in tools.tools]
    result = await client.call(session, pick(names, "echo"), message=ECHOED)
    assert text_of(result.content) == f"Echo: {ECHOED}"
    result = await client.call(session, pick(names, "get-sum", "add"), a=2, b=3.5)
    assert "5.5" in text_of(result.content)

    await session.set_logging_level("debug")
    client.ledger.request("logging/setLevel")

    sample = pick(names, "trigger-sampling-request", "sampleLLM")
    result = await client.call(session, sample, prompt="what is 6 x 7?", maxTokens=9)
    assert len(client.sampled) == 1
    assert "what is 6 x 7?" in client.sampled[0]
    assert "answer to" in text_of(result.content)

    resources, read, prompts, prompt = await client.browse(session, "simple-prompt")
    assert [str(c.uri) for c in read.contents] == [str(resources.resources[0].uri)]
    assert getattr(read.contents[0], "text", None) or getattr(read.contents[0], "blob", None)
    assert "simple-prompt" in [p.name for p in prompts.prompts]
    assert "simple prompt" in text_of(prompt.messages[0].content)

    await client.read_metrics(url)


@pytest.mark.sink
def test_sdk_client_and_server_everything_through_the_proxy(
    tmp_path: Path, mcp_server_everything: list[str]
) -> None:
    client = SdkClient()
    run = run_sdk_session(
        tmp_path,
        mcp_server_everything,
        client,
        lambda session, url: exercise_server_everything(client, session, url),
    )

    assert client.scrape is not None
    requests = client.wanted["shadowcat_requests_total"]
    assert requests[("initialize", TRANSPORT, "ok")] == 1
    assert requests[("tools/call", TRANSPORT, "ok")] == 3
    assert requests[("sampling/createMessage", TRANSPORT, "ok")] == 1
    assert requests[("roots/list", TRANSPORT, "ok")] == 1
    assert requests[("notifications/message", TRANSPORT, "ok")] >= 1
    check_traffic_metrics(client.scrape, client.wanted)

    messages = classify_tape(read_tape(run.tape, run.started, run.ended))
    assert tape_census(messages) == client.ledger.expected_tape()
    check_sizes_match_tape(client.scrape, messages)
    (echo_call,) = [
        c for c in taped_requests(messages, "tools/call") if c["params"]["name"] == "echo"
    ]
    assert echo_call["params"]["arguments"] == {"message": ECHOED}
    assert response_to(messages, echo_call)["result"]["content"] == [
        {"type": "text", "text": f"Echo: {ECHOED}"}
    ]


QUICK_SERVER = r'''"""Answers each request at once: finds its id with a regular expression
(no JSON parsing, however long the line) and sends an empty result."""
import re
import sys

ID = re.compile(rb'"id":(\d+)')
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    match = ID.search(line, 0, 100)
    if match:
        out.write(b'{"jsonrpc":"2.0","id":' + match.group(1) + b',"result":{}}\n')
        out.flush()
'''


# -- the raw client: bytes in, bytes out -----------------------------------------------------


class RawClient:
    """The proxy as a subprocess driven through its pipes, byte for byte."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=sinks.clean_environ(),
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.log = sinks.StderrLog(self.process.stderr)
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()
        self.sent.append(data)

    def read(self, timeout: float = LINE_TIMEOUT_SECS) -> bytes:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line from the proxy in {timeout:g} s; stderr:\n{self.log.text()}"
            ) from None
        if line is None:
            self._eof = True
            raise AssertionError(f"the proxy closed its stdout; stderr:\n{self.log.text()}")
        self.received.append(line)
        return line

    def unread(self, wait: float) -> list[bytes]:
        """Lines that arrive within ``wait`` seconds though nothing asked for them."""
        extra = []
        deadline = time.monotonic() + wait
        while not self._eof:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self._eof = True
            else:
                extra.append(line)
        return extra

    def close(self, timeout: float = 10.0) -> int:
        """Close the proxy's stdin (the session ends) and wait for it to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


StartRaw = Callable[..., RawClient]
StartTee = Callable[..., tuple[RawClient, Path, Path]]


@pytest.fixture
def raw_proxy(tmp_path: Path) -> Iterator[StartRaw]:
    """``start(server_command, tape=None, config=None)``: the proxy in front of the server,
    driven by a raw client; killed at teardown if still running."""
    clients: list[RawClient] = []

    def start(
        server: list[str], *, tape: Path | None = None, config: Path | None = None
    ) -> RawClient:
        client = RawClient(sinks.proxy_command(server, tape=tape, config=config), tmp_path)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.kill()


@pytest.fixture
def tee(tmp_path: Path, raw_proxy: StartRaw) -> StartTee:
    """``start(delay, tape=None, config=None)``: a raw client, the proxy and the tee server;
    returns (client, file of the lines the server received, file of the lines it sent)."""
    script = tmp_path / "tee_server.py"
    script.write_text(TEE_SERVER)

    def start(delay: float, **options: Any) -> tuple[RawClient, Path, Path]:
        received, sent = tmp_path / "server_received.bin", tmp_path / "server_sent.bin"
        server = [sys.executable, str(script), str(received), str(sent), str(delay)]
        return raw_proxy(server, **options), received, sent

    return start


@pytest.fixture
def quick_server(tmp_path: Path) -> list[str]:
    """The command of a server that answers every request at once (see QUICK_SERVER)."""
    script = tmp_path / "quick_server.py"
    script.write_text(QUICK_SERVER)
    return [sys.executable, str(script)]


LONG_TEXT = "é✓" * 100_000  # a 500 kB line

#: (bytes the client sends, lines it then reads)
EXCHANGES: list[tuple[bytes, int]] = [
    (
        b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}\n',
        1,
    ),
    (b'{ "method" : "notifications/initialized" , "jsonrpc" : "2.0" }\n', 0),
    (b'{"jsonrpc":"2.0",  "id":"a-1","method":"ping"}\n', 1),
    (  # keys in another order, unicode and other escapes
        b'{"params":{"name":"t","text":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/ \\t"},'
        b'"method":"tools/call","id":7,"jsonrpc":"2.0"}\n',
        1,
    ),
    (  # raw UTF-8, numbers as written
        '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"t","text":"café ✓ 😀",'
        '"n":1.50,"big":123456789012345678901234567890,"e":1E+2,"z":-0}}\n'.encode(),
        1,
    ),
    (b'{"jsonrpc":"2.0","id":9,"method":"ping"}   \r\n', 1),  # trailing blanks, CRLF
    (b"this is not JSON\n", 0),
    (b'{"jsonrpc":"2.0","method":"notifications/x","params":{"bad":"\xff\xfe"}}\n', 0),
    (  # a batch: a request and a notification
        b'[{"jsonrpc":"2.0","id":10,"method":"ping"}, {"jsonrpc":"2.0",'
        b'"method":"notifications/progress","params":{"progressToken":1,"progress":0.5}}]\n',
        1,
    ),
    # the server sends a notification and a request with the id of the client's pending one
    (b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"trigger"}}\n', 2),
    (
        b'{"id":11 ,"jsonrpc":"2.0","result":{"role":"assistant","model":"m",'
        b'"content":{"type":"text","text":"\\u00fcber"}}}\n',
        1,
    ),
    # 12 and "12" are distinct ids: both pending at once
    (
        b'{"jsonrpc":"2.0","id":12,"method":"ping"}\n{"jsonrpc":"2.0","id":"12","method":"ping"}\n',
        2,
    ),
    (b'{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"fail"}}\n', 1),
    (b'{"jsonrpc":"2.0","id":14,"method":"x-vendor/anything"}\n', 1),
    (
        b'{"jsonrpc":"2.0","id":15,"method":"tools/call","params":{"name":"t","text":'
        + json.dumps(LONG_TEXT, ensure_ascii=False).encode()
        + b"}}\n",
        1,
    ),
]


def test_messages_pass_through_byte_for_byte(tmp_path: Path, tee: StartTee) -> None:
    """Whatever the bytes, each line reaches the other side unchanged, in both directions;
    the tape and the metrics agree with what was exchanged."""
    tape = tmp_path / "tape.jsonl"
    # The server answers 2 ms late so that no response can overtake the proxy's bookkeeping
    # of its request (test_fast_responses_are_matched_to_their_requests pins that bug).
    client, received, sent = tee(0.002, tape=tape)
    started = time.time()
    url = client.log.metrics_url()
    for data, answers in EXCHANGES:
        client.send(data)
        for _ in range(answers):
            client.read()

    responses = [json.loads(line) for line in client.received]
    assert responses[0]["result"]["method"] == "initialize"
    assert responses[1]["id"] == "a-1"
    assert responses[2]["result"]["got"] == EXCHANGES[3][0].decode()
    assert responses[2]["result"]["café"] == 'é😀 "q"'
    assert responses[4]["result"]["got"].endswith("   \r\n")
    assert client.received[4].endswith(b"} \t\r\n")
    assert [r["id"] for r in responses[5]] == [10]
    assert responses[6]["params"]["data"] == "déjà vu ✓"
    assert responses[7]["method"] == "sampling/createMessage"
    assert responses[8]["result"]["client said"]["content"]["text"] == "über"
    assert [r["id"] for r in responses[9:11]] == [12, "12"]
    assert responses[11]["error"]["message"] == "failed on purpose"
    assert responses[13]["result"]["got"].count("é✓") == len(LONG_TEXT) // 2

    ledger = Ledger()
    ledger.request("initialize")
    ledger.notification("notifications/initialized")
    for _ in range(5):  # a-1, 9, 10, 12, "12"
        ledger.request("ping")
    for _ in range(4):  # 7, 8, 11 (trigger), 15
        ledger.request("tools/call")
    ledger.request("tools/call", "error")  # 13
    ledger.request("other")  # 14: a method outside the MCP set is counted as "other"
    ledger.notification("notifications/progress")
    ledger.notification("notifications/message", direction=S2C)
    ledger.request("sampling/createMessage", direction=S2C)
    client_lines = lines_of(b"".join(client.sent))
    taped = len(client_lines) + len(client.received)  # a batch is one line, taped once
    scrape, wanted = poll_metrics(url, lambda: ledger.expected_metrics(tape_lines=taped))
    assert traffic_metrics(scrape) == wanted
    # the two undecodable lines, relayed all the same
    assert scrape.series("shadowcat_upstream_errors_total", ("upstream", "error_type")) == {
        (UPSTREAM, "malformed_input"): 2
    }

    assert client.close() == 0, client.log.text()
    ended = time.time()
    assert client.unread(0) == []
    assert lines_of(received.read_bytes()) == client_lines
    assert client.received == lines_of(sent.read_bytes())

    entries = read_tape(tape, started, ended)
    assert [e.message for e in entries if e.direction == C2S] == [
        line.rstrip(b"\n").decode("utf-8", "replace") for line in client_lines
    ]
    assert [e.message for e in entries if e.direction == S2C] == [
        line.rstrip(b"\n").decode() for line in client.received
    ]


def lines_of(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (only there: a CR stays in its line)."""
    lines = data.split(b"\n")
    assert lines[-1] == b"", f"unterminated last line: {lines[-1][:100]!r}"
    return [line + b"\n" for line in lines[:-1]]


# -- proxy bugs ------------------------------------------------------------------------------


def pings(count: int, pad: int = 0) -> Iterator[tuple[int, bytes]]:
    """``count`` ping requests (ids 0, 1, ...), each padded with ``pad`` bytes of params."""
    params = b',"params":{"pad":"' + b"x" * pad + b'"}' if pad else b""
    for number in range(count):
        yield number, b'{"jsonrpc":"2.0","id":%d,"method":"ping"%s}\n' % (number, params)


def test_tape_records_each_request_before_its_response(
    tmp_path: Path, raw_proxy: StartRaw, quick_server: list[str]
) -> None:
    """The tape shows every request before the response that answers it, in time order.

    (When two pump threads each taped what they relayed, a fast answer to a long request
    was taped before the request, with the earlier ``ts``: a replay of the tape then saw an
    answer to a request not yet made.)
    """
    tape = tmp_path / "tape.jsonl"
    client = raw_proxy(quick_server, tape=tape)
    started = time.time()
    requests = [*pings(20, pad=1_000_000), *pings(200)]
    for number, request in requests:
        client.send(request)
        assert json.loads(client.read())["id"] == number
    assert client.close() == 0, client.log.text()
    entries = read_tape(tape, started, time.time())
    assert len(entries) == 2 * len(requests)

    pending: set[int] = set()
    early = []
    for index, entry in enumerate(entries):
        message = json.loads(entry.message)
        if entry.direction == C2S:
            pending.add(message["id"])
        elif message["id"] in pending:
            pending.remove(message["id"])
        else:
            early.append(index)
    assert early == [], (
        f"{len(early)} of {len(requests)} responses are taped before their requests, "
        f"e.g. at tape lines {early[:5]}"
    )
    assert [e.ts for e in entries] == sorted(e.ts for e in entries)


def test_fast_responses_are_matched_to_their_requests(
    tmp_path: Path, raw_proxy: StartRaw, quick_server: list[str]
) -> None:
    """A response that comes back at once is matched to its request, even with the tape
    slowing the client pump down, and the request is answered once.

    (Against core.py of commit 3694386 this failed: ``_pump_client`` registered a request in
    ``_pending`` only after ``self._upstream.send(line)``, the tape write and
    ``self._record_from_server()``, so a fast response counted
    ``shadowcat_upstream_errors_total{error_type="unknown_id"}`` instead of the request, and
    ``request_timeout_secs`` later the watchdog answered the request a second time with
    ``-32001 upstream timed out`` and counted a timeout: about 10 % of 1,000 pings.)
    """
    config = tmp_path / "proxy.toml"
    config.write_text("[metrics.proxy]\nrequest_timeout_secs = 1.0\n")
    client = raw_proxy(quick_server, tape=tmp_path / "tape.jsonl", config=config)
    url = client.log.metrics_url()
    requests = [*pings(500), *pings(10, pad=1_000_000)]
    for number, request in requests:
        client.send(request)
        assert json.loads(client.read())["id"] == number
    # past request_timeout_secs and a timeout check: a stale request would be answered again
    duplicates = client.unread(1.6)
    ledger = Ledger()
    for _ in requests:
        ledger.request("ping")
    scrape, wanted = poll_metrics(url, ledger.expected_metrics)
    errors = scrape.series("shadowcat_upstream_errors_total", ("upstream", "error_type"))
    assert client.close() == 0, client.log.text()
    assert duplicates == [], (
        f"{len(duplicates)} of {len(requests)} answered requests were answered again, e.g. "
        f"{duplicates[:2]}; upstream errors: {errors}"
    )
    assert errors == {}
    assert traffic_metrics(scrape) == wanted
