"""How ``metricsfacade proxy`` ends: stop signals, a server that will not end, a server that
cannot start. Real processes throughout: the proxy as ``python -m metricsfacade proxy``, a
server written to tmp_path that ignores end of input and SIGTERM (only SIGKILL ends it), and
the MCP Python SDK's client, whose shutdown closes the proxy's stdin, then 2 s later sends
SIGTERM to the process group, then 2 s later SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import eventually, require_module, sinks
from test_proxy import (
    LineReader,
    call,
    error_code,
    initialize,
    read_tape,
    request,
    start_proxy,
)

from metricsfacade.proxy.core import CANNOT_START, SIGNAL_GRACE_SECS, SIGNALLED_BASE
from metricsfacade.proxy.upstream import TERMINATE_WAIT_SECS

require_module("mcp")
require_module("anyio")
import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402

psutil = require_module("psutil")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

__all__ = ["start_proxy"]  # a fixture, used by name

pytestmark = pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")

#: Ignores end of input and SIGTERM; answers each request on a thread of its own (tools/call
#: after ``secs``), so several can be in flight. Writes its pid to argv[1], and the id of each
#: request it reads to argv[1] with the suffix ".received".
STUBBORN_SERVER = r"""
import json, os, signal, sys, threading, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "w") as handle:
    handle.write(str(os.getpid()))
lock = threading.Lock()


def send(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def answer(message):
    params = message.get("params") or {}
    method, rid = message["method"], message["id"]
    if method == "initialize":
        result = {"protocolVersion": params.get("protocolVersion", "2025-11-25"),
                  "capabilities": {"tools": {}},
                  "serverInfo": {"name": "stubborn", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": name, "inputSchema": {"type": "object"}}
                            for name in ("echo", "slow")]}
    elif method == "tools/call":
        arguments = params.get("arguments") or {}
        time.sleep(float(arguments.get("secs", 0)))
        result = {"content": [{"type": "text", "text": str(arguments.get("text", ""))}]}
    else:
        result = {}
    send({"jsonrpc": "2.0", "id": rid, "result": result})


received = open(os.path.splitext(sys.argv[1])[0] + ".received", "a", buffering=1)
for raw in sys.stdin:
    message = json.loads(raw)
    if "id" in message and "method" in message:
        received.write(json.dumps(message["id"]) + "\n")
        threading.Thread(target=answer, args=(message,), daemon=True).start()
while True:  # end of input: ignored
    time.sleep(3600)
"""

#: Runs its arguments and writes how they ended to argv[1]: the exit status, and whether the
#: stubborn server (pid in argv[2]) was still alive at that moment. It survives the SDK's
#: SIGTERM to the process group (the proxy, in the same group, gets it too).
STATUS_WRAPPER = r"""
import json, os, signal, subprocess, sys

for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, lambda *_: None)
status_path, pid_path, command = sys.argv[1], sys.argv[2], sys.argv[3:]
status = subprocess.call(command)
pid = int(open(pid_path).read())
try:
    os.kill(pid, 0)
    alive = True
except ProcessLookupError:
    alive = False
with open(status_path, "w") as handle:
    json.dump({"status": status, "server_alive": alive}, handle)
"""


def stubborn_server(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "stubborn_server.py"
    script.write_text(STUBBORN_SERVER)
    pid_path = tmp_path / "server.pid"
    return [sys.executable, str(script), str(pid_path)], pid_path


def server_pid(pid_path: Path) -> int:
    text = eventually(
        lambda: pid_path.exists() and pid_path.read_text(), 10, message="the server pid"
    )
    return int(text)


def gone(pid: int) -> bool:
    """The process has exited and been reaped (a zombie is not gone)."""
    return not psutil.pid_exists(pid)


def received(pid_path: Path) -> list[Any]:
    """The ids of the requests the stubborn server has read."""
    log = pid_path.with_suffix(".received")
    return [json.loads(raw) for raw in log.read_text().split()] if log.exists() else []


def tape_pairs(tape: Path) -> list[tuple[str, Any, str]]:
    """(direction, id, method or "response") of each taped message."""
    pairs = []
    for entry in read_tape(tape):
        message = json.loads(entry["message"])
        pairs.append((entry["direction"], message.get("id"), message.get("method", "response")))
    return pairs


# -- the SDK client's shutdown -------------------------------------------------------------------

CALLS = 40
TEXT = "t" * 200  # the tape passes its 8 KiB write buffer several times over


def test_sdk_client_shutdown_sigterm_leaves_a_whole_tape_and_no_process(tmp_path: Path) -> None:
    """The issue's case: the SDK client closes stdin, the server ignores it, 2 s later the
    SDK sends SIGTERM. The proxy answers it: the server is killed (it ignores SIGTERM too),
    every message is on the tape, and the proxy exits 143 before the SDK's SIGKILL."""
    server, pid_path = stubborn_server(tmp_path)
    tape = tmp_path / "tape.jsonl"
    wrapper = tmp_path / "status_wrapper.py"
    wrapper.write_text(STATUS_WRAPPER)
    status_path = tmp_path / "status.json"
    proxy = sinks.proxy_command(server, tape=tape)
    log, errlog = sinks.StderrLog.pipe()
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(wrapper), str(status_path), str(pid_path), *proxy],
        env=sinks.clean_environ(),
        cwd=str(tmp_path),
    )
    texts: list[str] = []

    async def session_run() -> None:
        with anyio.fail_after(40):
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                await session.list_tools()
                for index in range(CALLS):
                    result = await session.call_tool("echo", {"text": f"{index}{TEXT}"})
                    texts.append(result.content[0].text)  # type: ignore[union-attr]

    try:
        anyio.run(session_run)
    finally:
        errlog.close()
    assert texts == [f"{index}{TEXT}" for index in range(CALLS)]
    assert log.wait_closed(), f"a process still holds the proxy's stderr:\n{log.text()}"
    ended = json.loads(status_path.read_text())  # written: the SDK never had to SIGKILL
    assert ended == {"status": 128 + signal.SIGTERM, "server_alive": False}, log.text()
    assert gone(server_pid(pid_path))
    assert "SIGTERM" in log.text()
    pairs = tape_pairs(tape)
    requests = [(d, i, m) for d, i, m in pairs if d == "client_to_server" and i is not None]
    responses = [(d, i) for d, i, m in pairs if d == "server_to_client"]
    assert [m for _, _, m in requests] == ["initialize", "tools/list"] + ["tools/call"] * CALLS
    assert responses == [("server_to_client", i) for _, i, _ in requests]
    assert ("client_to_server", None, "notifications/initialized") in pairs
    assert len(pairs) == 2 * len(requests) + 1


# -- a stop signal in the middle of a session --------------------------------------------------


class Proxy:
    """``python -m metricsfacade proxy --tape`` in front of the stubborn server."""

    def __init__(self, tmp_path: Path) -> None:
        server, self.pid_path = stubborn_server(tmp_path)
        self.tape = tmp_path / "tape.jsonl"
        self.stderr_path = tmp_path / "proxy.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                sinks.proxy_command(server, tape=self.tape),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=sinks.clean_environ(),
            )
        self.out = LineReader(self.process.stdout)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdin is not None:
            self.process.stdin.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_answers_what_is_in_flight_and_ends_everything(
    tmp_path: Path, signum: int
) -> None:
    proxy = Proxy(tmp_path)
    try:
        proxy.send(initialize(1))
        assert "result" in proxy.out.recv_json(10)
        pid = server_pid(proxy.pid_path)
        quick, stuck = call(2, "slow", secs=0.3), call(3, "slow", secs=60)
        proxy.send(quick + stuck)
        eventually(
            lambda: received(proxy.pid_path) == [1, 2, 3], 5, message="the server to have both"
        )
        signalled = time.monotonic()
        proxy.process.send_signal(signum)
        answers = {message["id"]: message for message in proxy.out.recv_many(2, 5)}
        status = proxy.process.wait(5)
        took = time.monotonic() - signalled
        assert proxy.out.eof.wait(2)
    finally:
        proxy.close()
    assert status == 128 + signum, proxy.stderr()
    # The quick one was answered by the server within its grace; the stuck one by the proxy.
    assert answers[2]["result"]["content"][0]["text"] == ""
    assert answers[3]["error"] == {"code": -32000, "message": "the proxy is shutting down"}
    assert gone(pid), "the server must not outlive the proxy"
    # bounded: the grace, SIGTERM's wait, SIGKILL (the MCP SDKs' SIGKILL comes after 2 s)
    assert took < SIGNAL_GRACE_SECS + TERMINATE_WAIT_SECS + 1.0
    assert "SIGKILL" in proxy.stderr()
    assert tape_pairs(proxy.tape) == [
        ("client_to_server", 1, "initialize"),
        ("server_to_client", 1, "response"),
        ("client_to_server", 2, "tools/call"),
        ("client_to_server", 3, "tools/call"),
        ("server_to_client", 2, "response"),
        ("proxy_to_client", 3, "response"),
    ]


def test_a_signal_ignored_at_start_stays_ignored(tmp_path: Path) -> None:
    """``nohup``: SIGHUP ignored by the parent stays ignored; the session goes on."""
    server, _ = stubborn_server(tmp_path)
    process = subprocess.Popen(
        sinks.proxy_command(server),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=sinks.clean_environ(),
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # noqa: PLW1509
    )
    out = LineReader(process.stdout)
    try:
        assert process.stdin is not None
        process.stdin.write(request(1, "ping"))
        process.stdin.flush()
        assert out.recv_json(10)["id"] == 1
        process.send_signal(signal.SIGHUP)
        process.stdin.write(request(2, "ping"))
        process.stdin.flush()
        assert out.recv_json(5)["id"] == 2  # still relaying
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


# -- a server that cannot start ------------------------------------------------------------------


def test_a_server_that_cannot_start_ends_the_proxy_with_127(tmp_path: Path) -> None:
    """The issue's case: it kept running, answered every request with -32000, exited 0."""
    process = subprocess.Popen(
        sinks.proxy_command(["/nonexistent/server", "--flag"]),
        stdin=subprocess.PIPE,  # left open: the proxy must end by itself
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=sinks.clean_environ(),
    )
    try:
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 127
    assert out == b""
    assert "cannot start the server (/nonexistent/server --flag)" in err.decode()
    assert "No such file or directory" in err.decode()


def test_with_restart_a_server_that_cannot_start_yet_is_retried(start_proxy, tmp_path):
    """With ``restart``, a failed start is retried with backoff; requests meanwhile get
    -32000 at once, and once the command can start the session goes on."""
    script = tmp_path / "late_server.py"
    settings = {"restart": True, "restart_backoff_secs": 0.05, "breaker_reset_secs": 0.2}
    proxy = start_proxy([str(script)], settings)
    eventually(
        lambda: proxy.upstream_errors("spawn_failed") >= 3, 10, message="three failed starts"
    )
    refused = proxy.ask(request(1, "ping"))
    assert (refused["id"], error_code(refused)) == (1, -32000)
    demo = "import runpy; runpy.run_module('metricsfacade.demo.server', run_name='__main__')\n"
    draft = tmp_path / "draft.py"
    draft.write_text(f"#!{sys.executable}\n{demo}")
    draft.chmod(0o755)
    os.replace(draft, script)  # whole, or not there

    def answered() -> bool:
        return "result" in proxy.ask(request(2, "ping"))

    eventually(answered, 15, message="the server to start")
    assert proxy.close_client() == 0


def test_help_documents_the_exit_statuses() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "metricsfacade", "proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    text = " ".join(shown.split())
    for status in (CANNOT_START, SIGNALLED_BASE + signal.SIGTERM, SIGNALLED_BASE + signal.SIGINT):
        assert str(status) in text
    assert "Exit status: 0 when the client closed its input" in text
    assert "143 SIGTERM" in text
