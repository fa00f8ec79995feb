"""SIGTERM delivers what push backends buffered, then the process dies of SIGTERM as usual.

Each test runs a real process that configures a facade, records 50,000 increments with a
flush interval of an hour (so they stay buffered), says ``ready`` and waits for stdin to close.
The test sends SIGTERM and checks what a plain UDP or TCP receiver got (the counts of the
lines are summed, so aggregated lines count as much as single increments) and the exit status.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import sinks
from support.strict_statsd import Line, parse_line

from metricsfacade.config import load_config
from metricsfacade.shutdown import flush_all

INCREMENTS = 50_000
READY_TIMEOUT_SECS = 30.0
EXIT_TIMEOUT_SECS = 15.0
DELIVERY_TIMEOUT_SECS = 5.0
SENTINEL = "app.handler"

#: The child: options as JSON in argv[1]. ``before``/``after`` install an application
#: handler before or after configuring; ``thread_first`` configures in a thread first.
CHILD = """
import json, select, signal, socket, sys, threading
import metricsfacade as mf

options = json.loads(sys.argv[1])

def handler_name():
    handler = signal.getsignal(signal.SIGTERM)
    return handler.name if isinstance(handler, signal.Handlers) else handler.__module__

def app_handler(signum, frame):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"app.handler:1|c", tuple(options["sentinel_to"]))
    sys.exit(3)

if options.get("before") == "handler":
    signal.signal(signal.SIGTERM, app_handler)
elif options.get("before") == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
after_thread = None
if options.get("thread_first"):
    worker = threading.Thread(target=mf.Metrics, args=(options["config"],), kwargs={"environ": {}})
    worker.start()
    worker.join()
    after_thread = handler_name()
facades = [mf.Metrics(options["config"], environ={}) for _ in range(options.get("facades", 1))]
if options.get("after") == "exit":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
for index, facade in enumerate(facades):
    counter = facade.counter(f"sigterm_increments{index}", "test")
    for _ in range(50_000):
        counter.inc()
print("ready", json.dumps({"handler": handler_name(), "after_thread": after_thread}), flush=True)
# Python runs a handler between bytecodes: a signal caught just before a blocking read would
# wait for the read to end. A loop of short waits runs it within 0.1 s, until stdin closes.
while not select.select([sys.stdin], [], [], 0.1)[0]:
    pass
"""


class Sink:
    """Lines received by a plain UDP or TCP socket, parsed strictly, kept in arrival order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.lines: list[Line] = []
        self._changed = threading.Condition()
        family = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, family)
        if kind == "udp":  # a burst of datagrams must not overflow the default buffer
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        target = self._read_datagrams if kind == "udp" else self._accept
        threading.Thread(target=target, daemon=True).start()

    def _read_datagrams(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self._add(data.decode().split("\n"))

    def _accept(self) -> None:
        self.sock.listen()
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read_stream, args=(connection,), daemon=True).start()

    def _read_stream(self, connection: socket.socket) -> None:
        pending = b""
        with connection:
            while data := connection.recv(65536):
                *complete, pending = (pending + data).split(b"\n")
                self._add([line.decode() for line in complete])

    def _add(self, texts: list[str]) -> None:
        with self._changed:
            self.lines.extend(parse_line(text) for text in texts)
            self._changed.notify_all()

    def total(self, before: str | None = None) -> float:
        """The summed counts of the test's counters, received before a line named ``before``
        if given (the sentinel and anything else aside)."""
        with self._changed:
            names = [line.name for line in self.lines]
            end = names.index(before) if before in names else len(names)
            return sum(line.value for line in self.lines[:end] if line.name.startswith("sigterm."))

    def wait_total(self, expected: float) -> float:
        """The total once it reaches ``expected``, or after a bounded wait."""
        self.wait_until(lambda: self.total() >= expected)
        return self.total()

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        with self._changed:
            self._changed.wait_for(predicate, DELIVERY_TIMEOUT_SECS)

    def names(self) -> list[str]:
        with self._changed:
            return [line.name for line in self.lines]

    def describe(self) -> str:
        drops = sinks.udp_socket_drops(self.port) if self.kind == "udp" else None
        return f"{self.kind} sink on {self.port}: {len(self.lines)} lines, kernel drops {drops}"

    def close(self) -> None:
        if self.kind == "tcp":
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Child:
    """The child process, its readiness report and its stderr."""

    def __init__(self, options: dict[str, Any], tmp_path: Path) -> None:
        self.stderr_path = tmp_path / "child-stderr.txt"
        env = {k: v for k, v in sinks.clean_environ().items() if not k.startswith("DD_")}
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(options)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=tempfile.gettempdir(),
            )
        self.report = self._wait_ready()

    def _wait_ready(self) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], READY_TIMEOUT_SECS)
        line = stdout.readline().decode() if readable else ""
        assert line.startswith("ready "), f"the child is not ready: {line!r}\n{self.stderr()}"
        report: dict[str, Any] = json.loads(line.removeprefix("ready "))
        return report

    def terminate(self) -> int:
        """Send SIGTERM and return the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def finish(self) -> int:
        """Close stdin, so the child exits normally, and return the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.wait()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the child did not exit\n{self.stderr()}") from None

    def stderr(self) -> str:
        return f"child stderr:\n{self.stderr_path.read_text(errors='replace') or '(empty)'}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=EXIT_TIMEOUT_SECS)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


StartChild = Callable[..., Child]


@pytest.fixture
def start_child(tmp_path: Path) -> Iterator[StartChild]:
    """Start children (``start_child(config, **options)``), killed at the end of the test."""
    children: list[Child] = []

    def start(config: dict[str, Any], **options: Any) -> Child:
        child = Child({"config": {"port": None, **config}, **options}, tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


@pytest.fixture
def udp_sink() -> Iterator[Sink]:
    sink = Sink("udp")
    yield sink
    sink.close()


@pytest.fixture
def tcp_sink() -> Iterator[Sink]:
    sink = Sink("tcp")
    yield sink
    sink.close()


def statsd_to(sink: Sink, **settings: Any) -> dict[str, Any]:
    statsd = {"port": sink.port, "protocol": sink.kind, "flush_interval_secs": 3600, **settings}
    return {"backends": ["statsd"], "statsd": statsd}


def datadog_to(sink: Sink) -> dict[str, Any]:
    datadog = {"host": "127.0.0.1", "port": sink.port, "flush_interval_secs": 3600}
    return {"backends": ["datadog"], "datadog": datadog}


@pytest.mark.parametrize(
    ("sink_kind", "config_for"),
    [("udp", statsd_to), ("tcp", statsd_to), ("udp", datadog_to)],
    ids=["statsd-udp", "statsd-tcp", "datadog"],
)
def test_sigterm_delivers_every_buffered_increment_then_dies_of_sigterm(
    start_child: StartChild, sink_kind: str, config_for: Callable[[Sink], dict[str, Any]]
) -> None:
    sink = Sink(sink_kind)
    try:
        child = start_child(config_for(sink))
        assert child.terminate() == -signal.SIGTERM, child.stderr()
        assert sink.wait_total(INCREMENTS) == INCREMENTS, sink.describe()
        assert child.report["handler"] == "metricsfacade.shutdown"
    finally:
        sink.close()


def test_every_facade_is_flushed_by_one_handler(start_child: StartChild, udp_sink: Sink) -> None:
    child = start_child(statsd_to(udp_sink), facades=2)
    assert child.terminate() == -signal.SIGTERM, child.stderr()
    assert udp_sink.wait_total(2 * INCREMENTS) == 2 * INCREMENTS, udp_sink.describe()


def test_an_application_handler_installed_before_is_chained_after_the_flush(
    start_child: StartChild, udp_sink: Sink
) -> None:
    child = start_child(
        statsd_to(udp_sink), before="handler", sentinel_to=["127.0.0.1", udp_sink.port]
    )
    assert child.terminate() == 3, child.stderr()  # the application's handler exits with 3
    udp_sink.wait_until(lambda: SENTINEL in udp_sink.names())
    assert udp_sink.names().count(SENTINEL) == 1, udp_sink.describe()
    # One receiving socket keeps arrival order: the flush was over before theirs ran.
    assert udp_sink.total(before=SENTINEL) == INCREMENTS, udp_sink.describe()
    assert udp_sink.total() == INCREMENTS, udp_sink.describe()


def test_an_application_handler_installed_later_should_exit_normally(
    start_child: StartChild, udp_sink: Sink
) -> None:
    """Ours is replaced; sys.exit() in theirs runs the atexit close, which flushes."""
    child = start_child(statsd_to(udp_sink), after="exit")
    assert child.report["handler"] == "__main__"
    assert child.terminate() == 0, child.stderr()
    assert udp_sink.wait_total(INCREMENTS) == INCREMENTS, udp_sink.describe()


def test_an_ignored_sigterm_stays_ignored(start_child: StartChild, udp_sink: Sink) -> None:
    child = start_child(statsd_to(udp_sink), before="ignore")
    assert child.report["handler"] == "SIG_IGN"
    child.process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        child.process.wait(timeout=0.5)
    assert child.finish() == 0, child.stderr()
    assert udp_sink.wait_total(INCREMENTS) == INCREMENTS, udp_sink.describe()


def test_handle_sigterm_false_keeps_the_default_action(
    start_child: StartChild, udp_sink: Sink
) -> None:
    child = start_child({**statsd_to(udp_sink), "handle_sigterm": False})
    assert child.report["handler"] == "SIG_DFL"
    assert child.terminate() == -signal.SIGTERM, child.stderr()
    time.sleep(0.5)  # what was sent before the signal has arrived by now
    assert udp_sink.total() < INCREMENTS, "without the handler, buffered lines are lost"


def test_configuring_in_another_thread_installs_nothing_until_the_main_thread_does(
    start_child: StartChild, udp_sink: Sink
) -> None:
    child = start_child(statsd_to(udp_sink), thread_first=True)
    assert child.report == {"after_thread": "SIG_DFL", "handler": "metricsfacade.shutdown"}
    assert child.terminate() == -signal.SIGTERM, child.stderr()


def test_handle_sigterm_is_on_by_default_and_set_from_the_environment() -> None:
    assert load_config(None, environ={}).handle_sigterm is True
    environ = {"METRICSFACADE_HANDLE_SIGTERM": "false"}
    assert load_config(None, environ=environ).handle_sigterm is False


class BlockedFacade:
    """A facade whose flush needs a lock the interrupted thread holds."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def flush(self) -> None:
        with self.lock:
            pass


def test_a_flush_blocked_by_a_held_lock_is_abandoned_at_the_deadline() -> None:
    lock = threading.Lock()
    with lock:  # as if the signal arrived while the main thread held it
        started = time.monotonic()
        flush_all([BlockedFacade(lock)], timeout=0.3)  # type: ignore[list-item]
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 2.0


@pytest.mark.sink
def test_the_etsy_daemon_counts_every_increment_after_sigterm(
    start_child: StartChild, statsd_daemon: sinks.StatsdDaemon
) -> None:
    statsd = {"port": statsd_daemon.tcp_port, "protocol": "tcp", "flush_interval_secs": 3600}
    child = start_child({"backends": ["statsd"], "statsd": statsd})
    assert child.terminate() == -signal.SIGTERM, child.stderr()
    expected = {"sigterm.increments0": INCREMENTS}
    counters = statsd_daemon.wait_for("counters", expected)
    assert counters.get("sigterm.increments0") == INCREMENTS, statsd_daemon.diagnostics()
    assert statsd_daemon.bad_lines_seen == 0, statsd_daemon.diagnostics()
