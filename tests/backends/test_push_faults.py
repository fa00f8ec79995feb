"""Push backends against absent, refusing, stalled and returning agents, and across fork().

Everything runs over real sockets (UDP, TCP, Unix stream and datagram) and real processes
(``os.fork``); nothing is mocked except, in one test, a backend's send made to raise.

A flush sends one line per series that changed, so the drop counts below are lines: ten
increments of one counter between two flushes are one line.

Both push backends connect their UDP socket, so a missing UDP agent is noticed (Linux,
loopback): the first datagram is accepted by the kernel and answered with an ICMP "port
unreachable", which is queued on the connected socket; the next ``send`` fails with
ECONNREFUSED, so its lines and the refused datagram's are counted as ``send_failed``, then as
``agent_unavailable`` while the backoff lasts.

Dropped lines are reported as ``metricsfacade_backend_dropped_total`` to the *other*
backends (here the memory backend), never to the failing one, so the counts are exact.
"""

from __future__ import annotations

import gc
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import closed_udp_port, eventually, sinks

import metricsfacade as mf

DROPS = "metricsfacade_backend_dropped_total"
THREAD_PREFIX = "metricsfacade-"
#: flush_interval_secs long enough that only explicit flush() calls send a partial packet
NEVER = 3600


pytestmark = pytest.mark.usefixtures("no_datadog_environment")


# -- helpers ---------------------------------------------------------------------------------


def drops(memory: Any, backend: str) -> dict[str, float]:
    """``metricsfacade_backend_dropped_total`` of one backend, by reason (non-zero ones:
    the series of every reason exist from the start, at 0)."""
    return {
        record.labels["reason"]: record.value
        for record in memory.records(DROPS)
        if record.labels["backend"] == backend and record.value
    }


def metricsfacade_threads() -> set[threading.Thread]:
    return {
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(THREAD_PREFIX) and thread.is_alive()
    }


class DatagramAgent:
    """A UDP or Unix datagram receiver that keeps every datagram and its source address."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.datagrams: list[tuple[bytes, Any]] = []

    @classmethod
    def udp(cls) -> DatagramAgent:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return cls(sock)

    @classmethod
    def unix(cls, path: Path) -> DatagramAgent:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def lines(self) -> list[bytes]:
        return [line for data, _ in self.datagrams for line in data.split(b"\n") if line]

    def sources(self, line: bytes) -> list[Any]:
        """The source address of every datagram holding ``line`` (once per occurrence)."""
        return [
            source
            for data, source in self.datagrams
            for received in data.split(b"\n")
            if received == line
        ]

    def receive(self, until: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Read datagrams until ``until()`` holds or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                self.datagrams.append(self.sock.recvfrom(65535))
            except TimeoutError:
                return until()
        return True

    def settle(self, secs: float = 0.2) -> None:
        """Read whatever else arrives within ``secs`` (to catch duplicates and strays)."""
        self.receive(lambda: False, timeout=secs)

    def close(self) -> None:
        self.sock.close()


class StreamAgent:
    """A TCP or Unix stream listener. ``mode``: "read" keeps everything it receives;
    "stall" accepts and never reads; "trickle" reads a little, slowly."""

    def __init__(self, sock: socket.socket, mode: str = "read") -> None:
        self.sock = sock
        self.mode = mode
        self.connections: list[socket.socket] = []
        self._data = bytearray()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def tcp(cls, port: int = 0, mode: str = "read", rcvbuf: int | None = None) -> StreamAgent:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:  # inherited by accepted sockets: a small window stalls sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", port))
        return cls(sock, mode)

    @classmethod
    def unix(cls, path: Path) -> StreamAgent:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.mode != "stall":
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                chunk = conn.recv(8192)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._data.extend(chunk)
            if self.mode == "trickle" and self._stopped.wait(0.25):
                return

    def close(self) -> None:
        """Stop listening and reset every connection (RST), so blocked senders fail at once."""
        self._stopped.set()
        self.sock.close()
        for conn in self.connections:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            except OSError:
                pass


@pytest.fixture
def agents() -> Iterator[list[Any]]:
    """Agents registered here are closed at teardown."""
    started: list[Any] = []
    yield started
    for agent in started:
        agent.close()


# -- absent UDP agent --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_udp_agent_absent_costs_no_exception_and_no_time(make_facade, backend):
    port = closed_udp_port()
    table = {"host": "127.0.0.1", "port": port, "flush_interval_secs": NEVER}
    with make_facade(backends=[backend, "memory"], **{backend: table}) as m:
        requests = m.counter("demo_requests_total", "Requests", labels=["method"])
        latency = m.timer("demo_latency_seconds", "Latency")
        # No exception and nothing lost in memory; how fast it goes is for the benchmarks.
        for index in range(1000):
            requests.labels("get").inc()
            latency.observe(index / 1000)
        m.flush()
        memory = m.backend("memory")
        assert memory.value("demo_requests_total", {"method": "get"}) == 1000


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_udp_connected_socket_counts_refused_sends_as_drops(make_facade, backend):
    """A connected UDP socket gets ECONNREFUSED on the send after the ICMP error."""
    port = closed_udp_port()
    table = {"host": "127.0.0.1", "port": port, "flush_interval_secs": NEVER}
    with make_facade(backends=[backend, "memory"], **{backend: table}) as m:
        requests = m.counter("demo_requests_total", "Requests")
        memory = m.backend("memory")
        requests.inc()
        m.flush()  # connects and sends: accepted by the kernel, answered by ICMP
        time.sleep(0.05)
        assert drops(memory, backend) == {}
        requests.inc(2)
        m.flush()  # the queued ICMP error surfaces here: this packet and the refused one
        assert eventually(lambda: drops(memory, backend), fail=False) == {"send_failed": 2}
        for _ in range(3):  # within the 0.1 s backoff: refused without touching the socket
            requests.inc(3)
            m.flush()
        assert drops(memory, backend) == {"send_failed": 2, "agent_unavailable": 3}


# -- stream agents: refused, then started ------------------------------------------------------


def stream_settings(kind: str, tmp_path: Path) -> tuple[dict[str, Any], Callable[[], Any]]:
    """Settings pointing at a stream agent that is not there yet, and a function starting it."""
    if kind == "tcp":
        port = sinks.free_port()
        settings = {"protocol": "tcp", "host": "127.0.0.1", "port": port}
        return settings, lambda: StreamAgent.tcp(port)
    path = tmp_path / "missing.sock"
    return {"protocol": "unix", "socket_path": str(path)}, lambda: StreamAgent.unix(path)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stream_agent_refused_then_started_reconnects(make_facade, kind, tmp_path, agents):
    settings, start_agent = stream_settings(kind, tmp_path)
    with make_facade(
        backends=["statsd", "memory"], statsd={**settings, "flush_interval_secs": NEVER}
    ) as m:
        refused = m.counter("demo_refused_total", "Recorded while the agent is absent")
        back = m.counter("demo_back_total", "Recorded once it is back")
        memory = m.backend("memory")

        started = time.perf_counter()
        for value in range(1, 11):
            refused.inc(value)
        m.flush()
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, f"recording and flushing to a refused agent took {elapsed:.3f}s"
        assert eventually(lambda: drops(memory, "statsd"), fail=False) == {"send_failed": 1}

        for _ in range(3):  # still backing off: dropped without a connection attempt
            refused.inc(11)
            m.flush()
        counted = drops(memory, "statsd")
        assert counted["send_failed"] == 1
        assert counted["agent_unavailable"] >= 3

        agent = start_agent()
        agents.append(agent)

        def record_and_flush() -> None:
            back.inc()
            m.flush()

        started = time.monotonic()
        assert eventually(
            lambda: b"demo.back:1|c\n" in agent.data or record_and_flush(), fail=False
        ), f"no line reached the agent after it started; drops: {drops(memory, 'statsd')}"
        reconnect_secs = time.monotonic() - started
        assert reconnect_secs < 3.0
        back.inc(42)
        m.flush()
        assert eventually(lambda: b"demo.back:42|c\n" in agent.data, fail=False)
        data = agent.data
        assert data.endswith(b"\n"), data[-200:]
        assert b"demo.refused" not in data, "lines dropped while refused were sent later"
        assert all(
            line.startswith((b"demo.back:", b"metricsfacade.")) for line in data[:-1].split(b"\n")
        )


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_refused_connect_closes_its_socket(make_facade, kind, tmp_path):
    """A failed connect() must not leave its socket to the garbage collector."""
    settings, _ = stream_settings(kind, tmp_path)
    with make_facade(
        backends=["statsd", "memory"], statsd={**settings, "flush_interval_secs": NEVER}
    ) as m:
        requests = m.counter("demo_requests_total", "Requests")
        memory = m.backend("memory")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)

            def record_and_flush() -> None:
                requests.inc()
                m.flush()

            # three failed connects (0.1 s, then 0.2 s of backoff between them): the first
            # one's exception is kept alive by the warning it logs, the others are not
            failures = eventually(
                lambda: drops(memory, "statsd").get("send_failed", 0) >= 3 or record_and_flush(),
                fail=False,
            )
            assert failures, drops(memory, "statsd")
            gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert unclosed == [], unclosed


def test_datadog_unix_datagram_socket_missing_then_bound(make_facade, tmp_path, agents):
    path = tmp_path / "dsd.socket"
    table = {"socket_path": str(path), "flush_interval_secs": NEVER}
    with make_facade(backends=["datadog", "memory"], datadog=table) as m:
        missing = m.counter("demo_missing_total", "Recorded while the socket is missing")
        back = m.counter("demo_back_total", "Recorded once it is bound")
        memory = m.backend("memory")

        started = time.perf_counter()
        for value in range(1, 6):
            missing.inc(value)
        m.flush()
        assert time.perf_counter() - started < 0.5
        assert eventually(lambda: drops(memory, "datadog"), fail=False) == {"send_failed": 1}
        missing.inc(6)
        m.flush()
        assert drops(memory, "datadog").get("agent_unavailable", 0) >= 1

        agent = DatagramAgent.unix(path)
        agents.append(agent)
        agent.sock.setblocking(False)

        def record_and_flush() -> None:
            back.inc()
            m.flush()
            try:
                while True:
                    agent.datagrams.append(agent.sock.recvfrom(65535))
            except BlockingIOError:
                pass

        assert eventually(
            lambda: b"demo.back:1|c" in agent.lines() or record_and_flush(), fail=False
        ), f"nothing arrived on the bound socket; drops: {drops(memory, 'datadog')}"
        agent.sock.setblocking(True)
        back.inc(42)
        m.flush()
        assert agent.receive(lambda: b"demo.back:42|c" in agent.lines())
        assert not [line for line in agent.lines() if line.startswith(b"demo.missing")]


# -- a stalled or slow TCP agent ---------------------------------------------------------------


LONG_PATH = "/" + "x" * 80  # ~100 bytes a line: 100k lines are 10 MB, far more than fits
SERIES = 100_000


def record_into_stalled_agent(
    make_facade: Callable[..., mf.Metrics], agent: StreamAgent
) -> tuple[mf.Metrics, Any, float, float]:
    """One recording into each of 100k series (a line each at the next flush) for a TCP
    agent that never reads: (facade, memory, worst, total secs)."""
    table = {"protocol": "tcp", "host": "127.0.0.1", "port": agent.port}
    m = make_facade(
        backends=["statsd", "memory"],
        statsd={**table, "flush_interval_secs": 0.05},
        cardinality_limit=SERIES,
    )
    counter = m.counter("demo_requests_total", "Requests", labels=["path"])
    children = [counter.labels(f"{LONG_PATH}{index}") for index in range(SERIES)]
    gc.collect()
    gc.freeze()  # a full collection of the 100k series mid-loop would be timed, not a stall
    clock = time.perf_counter
    worst = 0.0
    started = clock()
    try:
        for child in children:
            before_call = clock()
            child.inc()
            worst = max(worst, clock() - before_call)
    finally:
        gc.unfreeze()
    return m, m.backend("memory"), worst, clock() - started


def test_stalled_tcp_agent_never_blocks_recording_and_close_is_bounded(make_facade, agents):
    agent = StreamAgent.tcp(mode="stall", rcvbuf=4096)
    agents.append(agent)
    before = metricsfacade_threads()
    m, memory, worst, _ = record_into_stalled_agent(make_facade, agent)
    try:
        assert worst < 0.1, f"one recording took {worst:.3f}s while the agent stalled"
        assert sum(record.value for record in memory.records("demo_requests_total")) == SERIES
        # the flusher, not the caller, sat in sendall() until the 2 s send timeout
        assert eventually(lambda: drops(memory, "statsd").get("send_failed"), 8.0, fail=False), (
            f"the stall never ended in a send timeout: {drops(memory, 'statsd')}"
        )
        assert agent.connections, "the agent never saw a connection"
    finally:
        started = time.perf_counter()
        m.close()
        close_secs = time.perf_counter() - started
    assert close_secs < 10.0, f"close() took {close_secs:.1f}s with a stalled agent"
    assert not (metricsfacade_threads() - before)


def test_close_during_a_stall_counts_the_drops_and_stops_the_flusher(make_facade, agents):
    """close() while a flush is blocked in sendall(): close gives it a second, then cuts the
    connection; the lines not sent are dropped and counted, the flusher ends, and close()
    returns well within the 2 s send timeout plus that second."""
    agent = StreamAgent.tcp(mode="stall", rcvbuf=4096)
    agents.append(agent)
    before = metricsfacade_threads()
    m, memory, _, _ = record_into_stalled_agent(make_facade, agent)
    assert not any(drops(memory, "statsd").values()), "the stall ended before close()"
    started = time.perf_counter()
    m.close()
    close_secs = time.perf_counter() - started
    leftover = sorted(thread.name for thread in metricsfacade_threads() - before)
    counted = drops(memory, "statsd")
    assert close_secs < 10.0, f"close() took {close_secs:.1f}s with a stalled agent"
    assert not leftover, f"still alive after close() returned in {close_secs:.1f}s: {leftover}"
    assert sum(counted.values()) >= 1, f"drops found by close() went uncounted: {counted}"
    assert set(counted) <= {"send_failed", "agent_unavailable", "closing"}, counted
    assert close_secs < 4.0, f"close() took {close_secs:.1f}s: more than the 2 s send timeout"


def test_close_is_bounded_when_the_agent_reads_slowly(make_facade, agents):
    """An agent reading 32 kB/s never lets a send time out: close() must not wait for it to
    take a whole flush (100,000 lines, here ~10 MB) at that pace."""
    agent = StreamAgent.tcp(mode="trickle", rcvbuf=4096)
    agents.append(agent)
    table = {"protocol": "tcp", "host": "127.0.0.1", "port": agent.port}
    before = metricsfacade_threads()
    m = make_facade(
        backends=["statsd"], statsd={**table, "flush_interval_secs": 0.05}, cardinality_limit=SERIES
    )
    counter = m.counter("demo_requests_total", "Requests", labels=["path"])
    for index in range(SERIES):
        counter.labels(f"{LONG_PATH}{index}").inc()
    assert eventually(lambda: agent.data, 2.0, fail=False), "the agent received nothing"

    closer = threading.Thread(target=m.close, name="test-closer", daemon=True)
    started = time.monotonic()
    closer.start()
    closer.join(10.0)
    close_secs = time.monotonic() - started
    still_closing = closer.is_alive()
    leftover = metricsfacade_threads() - before
    agent.close()  # resets the connection: lets a hanging close() finish before teardown
    closer.join(10.0)
    assert not still_closing, f"close() still running after {close_secs:.1f}s (slow agent)"
    assert not leftover, f"threads alive after close(): {sorted(t.name for t in leftover)}"


# -- several backends --------------------------------------------------------------------------


def test_memory_backend_exact_while_statsd_and_datadog_agents_are_absent(make_facade):
    statsd_port = sinks.free_port()
    datadog_port = closed_udp_port()
    with make_facade(
        backends=["statsd", "datadog", "memory"],
        statsd={"protocol": "tcp", "port": statsd_port, "flush_interval_secs": 0.05},
        datadog={"host": "127.0.0.1", "port": datadog_port, "flush_interval_secs": 0.05},
    ) as m:
        requests = m.counter("demo_requests_total", "Requests", labels=["method"])
        level = m.gauge("demo_level", "Level")
        sizes = m.histogram("demo_size_bytes", "Sizes", buckets=[10, 100])
        observed = []
        for index in range(2000):
            requests.labels("get" if index % 3 else "put").inc(index % 7)
            level.inc(2)
            level.dec()
            sizes.observe(index % 150)
            observed.append(float(index % 150))
            if index % 500 == 0:
                m.flush()
        m.flush()
        memory = m.backend("memory")
        expected_get = sum(index % 7 for index in range(2000) if index % 3)
        expected_put = sum(index % 7 for index in range(2000) if not index % 3)
        assert memory.value("demo_requests_total", {"method": "get"}) == expected_get
        assert memory.value("demo_requests_total", {"method": "put"}) == expected_put
        assert memory.value("demo_level") == 2000
        (record,) = memory.records("demo_size_bytes")
        assert record.histogram is not None
        assert record.histogram.count == 2000
        assert sorted(record.histogram.values) == sorted(observed)
        # the agents' absence is counted as undelivered lines, never as record errors
        assert eventually(lambda: drops(memory, "statsd").get("send_failed"), fail=False)
        assert eventually(
            lambda: drops(memory, "datadog").get("send_failed") or (level.set(0), m.flush())[-1],
            fail=False,
        )
        assert memory.records("metricsfacade_dropped_total") == []


def test_one_backend_raising_on_send_never_affects_the_others(
    make_facade, monkeypatch, agents, caplog
):
    statsd_agent = DatagramAgent.udp()
    datadog_agent = DatagramAgent.udp()
    agents.extend([statsd_agent, datadog_agent])
    with make_facade(
        backends=["statsd", "datadog", "memory"],
        statsd={"host": "127.0.0.1", "port": statsd_agent.port, "flush_interval_secs": NEVER},
        datadog={"host": "127.0.0.1", "port": datadog_agent.port, "flush_interval_secs": NEVER},
    ) as m:

        def broken_send(changes: Any) -> None:
            raise RuntimeError("statsd backend is broken")

        monkeypatch.setattr(m.backend("statsd"), "send", broken_send)
        requests = m.counter("demo_requests_total", "Requests", labels=["method"])
        level = m.gauge("demo_level", "Level")
        for value in (1, 2, 3, 4, 5):
            requests.labels("get").inc(value)
        level.set(7)
        m.flush()

        memory = m.backend("memory")
        assert memory.value("demo_requests_total", {"method": "get"}) == 15
        assert memory.value("demo_level") == 7
        assert memory.records("metricsfacade_dropped_total") == []  # recording never failed

        wanted = [b"demo.requests:15|c|#method:get", b"demo.level:7|g"]
        assert datadog_agent.receive(lambda: all(w in datadog_agent.lines() for w in wanted))
        statsd_agent.settle(0.2)
        assert not [line for line in statsd_agent.lines() if line.startswith(b"demo.")]
    assert "the statsd backend failed to send" in caplog.text


# -- fork --------------------------------------------------------------------------------------


def udp_table(backend: str, port: int, interval: float) -> dict[str, Any]:
    return {backend: {"host": "127.0.0.1", "port": port, "flush_interval_secs": interval}}


@pytest.fixture
def udp_agent(agents) -> DatagramAgent:
    agent = DatagramAgent.udp()
    agents.append(agent)
    return agent


def parent_source(m: mf.Metrics, agent: DatagramAgent) -> Any:
    """Send one line from the parent so its socket exists, and return its source address."""
    m.counter("demo_warmup_total", "Warm-up").inc()
    m.flush()
    assert agent.receive(lambda: b"demo.warmup:1|c" in agent.lines())
    (source,) = agent.sources(b"demo.warmup:1|c")
    return source


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_fork_child_sends_only_its_own_lines_on_its_own_socket(make_facade, backend, udp_agent):
    agent = udp_agent
    with make_facade(backends=[backend], **udp_table(backend, agent.port, NEVER)) as m:
        parent = m.counter("demo_parent_total", "Recorded before fork")
        child = m.counter("demo_child_total", "Recorded in the child")
        source = parent_source(m, agent)
        for value in (1, 2, 3):
            parent.inc(value)  # buffered, not flushed, when the process forks

        def in_child() -> int:
            child.inc(9)
            m.flush()
            return 0

        assert sinks.run_in_child(in_child) == 0
        m.flush()
        parent_lines = [b"demo.parent:6|c"]  # the three increments, summed
        expected = [*parent_lines, b"demo.child:9|c"]
        assert agent.receive(lambda: all(line in agent.lines() for line in expected))
        agent.settle(0.2)
        for line in parent_lines:
            assert agent.sources(line) == [source], f"{line!r} sent by {agent.sources(line)}"
        (child_source,) = agent.sources(b"demo.child:9|c")
        assert child_source != source, "the child sent through the parent's socket"


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_fork_child_exiting_without_flush_loses_only_its_own_lines(make_facade, backend, udp_agent):
    agent = udp_agent
    with make_facade(backends=[backend], **udp_table(backend, agent.port, NEVER)) as m:
        parent = m.counter("demo_parent_total", "Recorded before fork")
        child = m.counter("demo_child_total", "Recorded in the child")
        for value in (1, 2, 3):
            parent.inc(value)

        def in_child() -> int:
            child.inc(9)
            return 0  # os._exit: no flush, no atexit

        assert sinks.run_in_child(in_child) == 0
        m.flush()
        parent_lines = [b"demo.parent:6|c"]
        assert agent.receive(lambda: all(line in agent.lines() for line in parent_lines))
        agent.settle(0.3)
        assert sorted(agent.lines()) == sorted(parent_lines)


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_fork_child_flushes_on_its_own_interval(make_facade, backend, udp_agent):
    agent = udp_agent
    with make_facade(backends=[backend], **udp_table(backend, agent.port, 0.05)) as m:
        child = m.counter("demo_child_total", "Recorded in the child")
        source = parent_source(m, agent)
        flusher = "metricsfacade-push"
        assert flusher in {thread.name for thread in metricsfacade_threads()}

        def in_child() -> int:
            if flusher not in {thread.name for thread in metricsfacade_threads()}:
                return 3  # the parent's flusher thread did not survive fork: none of its own
            child.inc(9)
            time.sleep(0.5)  # ten flush intervals, and no explicit flush
            return 0

        assert sinks.run_in_child(in_child) == 0, "the forked child has no flusher thread"
        assert agent.receive(lambda: b"demo.child:9|c" in agent.lines(), timeout=2.0), (
            "the child's line was never flushed on its interval"
        )
        (child_source,) = agent.sources(b"demo.child:9|c")
        assert child_source != source


# -- after close -------------------------------------------------------------------------------


def test_after_close_recording_is_a_silent_no_op_and_no_thread_remains(make_facade, agents):
    statsd_agent = DatagramAgent.udp()
    datadog_agent = DatagramAgent.udp()
    agents.extend([statsd_agent, datadog_agent])
    before = metricsfacade_threads()
    m = make_facade(
        backends=["statsd", "datadog", "memory"],
        statsd={"host": "127.0.0.1", "port": statsd_agent.port, "flush_interval_secs": 0.05},
        datadog={"host": "127.0.0.1", "port": datadog_agent.port, "flush_interval_secs": 0.05},
    )
    started = metricsfacade_threads() - before
    assert [thread.name for thread in started] == ["metricsfacade-push"]  # one for both
    requests = m.counter("demo_requests_total", "Requests", labels=["method"])
    level = m.gauge("demo_level", "Level")
    latency = m.timer("demo_latency_seconds", "Latency")
    requests.labels("get").inc()
    memory = m.backend("memory")
    m.close()
    leftover = sorted(thread.name for thread in metricsfacade_threads() - before)
    assert not leftover, f"alive after close(): {leftover}"
    assert not any(thread.is_alive() for thread in started)
    assert statsd_agent.receive(lambda: b"demo.requests:1|c|#method:get" in statsd_agent.lines())
    assert datadog_agent.receive(lambda: b"demo.requests:1|c|#method:get" in datadog_agent.lines())
    received = (len(statsd_agent.datagrams), len(datadog_agent.datagrams))

    requests.labels("get").inc(5)
    requests.labels("put").inc()
    level.set(3)
    level.inc()
    latency.observe(0.5)
    with latency.time():
        pass
    m.flush()
    m.close()

    assert memory.value("demo_requests_total", {"method": "get"}) == 1
    assert memory.value("demo_level") == 0
    statsd_agent.settle(0.2)
    datadog_agent.settle(0.1)
    assert (len(statsd_agent.datagrams), len(datadog_agent.datagrams)) == received
    assert not (metricsfacade_threads() - before)
