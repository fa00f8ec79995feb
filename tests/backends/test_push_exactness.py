"""Push backends lose nothing and send nothing twice (issue 10's checks).

Recording updates one cell per series; every flush sends each changed series once (counters:
their increase, gauges: their value, histograms: the observations, or a uniform sample with
``|@rate``). So what an agent adds up must equal what was recorded, exactly, at any rate:

- the StatsD backend against the real Etsy daemon (UDP), read through a ``totals`` daemon
  (``sinks.TOTALS_BACKEND_JS``): it flushes every 100 ms to a backend that sums what it gets,
  the way Graphite would; its timer counts are the daemon's ``timer_counters`` (each value of
  a ``|@rate`` line counts ``1/rate``), which the management console does not show;
- the Datadog backend against a strict DogStatsD parser on a plain UDP socket
  (``sinks.UdpLineSink``), which the Etsy daemon cannot stand in for: it cannot read the
  multi-value histogram lines of DogStatsD protocol 1.1.

Histogram counts at the agent are compared with ``math.isclose(rel_tol=1e-9)`` and rounded
to the unit: a rate is written as a decimal (17 places), so ``1/rate`` carries a rounding
error of about 1e-16 per line. Counters and gauges are compared exactly.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import support
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import closed_udp_port, sinks, strict_statsd

import metricsfacade as mf

DROPS = "metricsfacade_backend_dropped_total"
NEVER = 3600
LOOP = 1_000_000
THREADS = 4
#: generous: a test's own polling deadline, not a speed requirement
SETTLE_SECS = 30.0


@pytest.fixture(autouse=True)
def _no_origin_detection(no_datadog_environment: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_ORIGIN_DETECTION_ENABLED", "false")  # no |c: field to strip


@pytest.fixture
def totals_daemon(
    statsd_install: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sinks.StatsdDaemon]:
    """An Etsy daemon flushing every 100 ms to the totals backend (see the module doc)."""
    node, stats_js = statsd_install
    daemon = sinks.start_statsd_daemon(
        tmp_path_factory.mktemp("statsd"), node=node, stats_js=stats_js, totals=True
    )
    yield daemon
    daemon.stop()


def facade(backend: str, host: str, port: int, **top: Any) -> mf.Metrics:
    """One push backend to ``host:port`` (plus the memory backend), ignoring the environment."""
    interval = top.pop("flush_interval_secs", NEVER)
    table = {"host": host, "port": port, "flush_interval_secs": interval}
    return mf.Metrics(
        {"port": None, "backends": [backend, "memory"], backend: table, **top}, environ={}
    )


# -- what an agent makes of the lines ----------------------------------------------------------

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@attrs.define
class AgentView:
    """Per ``(name, tags)``: counter sums, gauge values, histogram values and counts, the way
    an agent reads the lines. ``statsd_gauges``: a signed gauge value is a delta unless the
    gauge is unset or 0 (the Etsy daemon); else gauges are absolute (DogStatsD)."""

    counters: dict[SeriesKey, float] = attrs.Factory(dict)
    gauges: dict[SeriesKey, float] = attrs.Factory(dict)
    values: dict[SeriesKey, list[float]] = attrs.Factory(dict)
    counts: dict[SeriesKey, float] = attrs.Factory(dict)

    @classmethod
    def of(cls, lines: list[strict_statsd.Line], statsd_gauges: bool = False) -> AgentView:
        view = cls()
        for line in lines:
            key = (line.name, line.tags)
            rate = line.rate or 1.0
            if line.type == "c":
                view.counters[key] = view.counters.get(key, 0.0) + line.value / rate
            elif line.type == "g":
                current = view.gauges.get(key)
                if statsd_gauges and line.signed and current:
                    view.gauges[key] = current + line.value
                else:
                    view.gauges[key] = line.value
            else:
                view.values.setdefault(key, []).extend(line.all_values)
                view.counts[key] = view.counts.get(key, 0.0) + len(line.all_values) / rate
        return view


def assert_count(found: float | None, expected: int, what: str) -> None:
    assert found is not None, f"{what}: nothing arrived"
    message = f"{what}: the agent counts {found!r} observations, {expected} were recorded"
    assert round(found) == expected, message
    assert math.isclose(found, expected, rel_tol=1e-9), message


# -- 1,000,000 increments in a tight loop, one thread ----------------------------------------


def record_tight_loop(m: mf.Metrics) -> tuple[int, int]:
    """1,000,000 increments of one bound counter, with every 10th iteration a gauge set (one
    ending positive, one negative), a histogram observation and a timer observation: flushes
    run meanwhile every 50 ms. Returns (increments, observations per histogram)."""
    requests = m.counter("exact_requests_total", "Requests", ["method"]).labels("get")
    up = m.gauge("exact_level", "Level", ["sign"]).labels("up")
    down = m.gauge("exact_level", "Level", ["sign"]).labels("down")
    sizes = m.histogram("exact_size_bytes", "Sizes", buckets=[10, 100])
    latency = m.timer("exact_latency_seconds", "Latency")
    inc = requests.inc
    observed = 0
    for i in range(LOOP):
        inc()
        if i % 10 == 0:
            up.set(i)
            down.set(-i - 0.5)
            sizes.observe(i % 1000)
            latency.observe(i % 8 / 8)
            observed += 1
    return LOOP, observed


@pytest.mark.sink
def test_statsd_tight_loop_arrives_exactly_at_the_daemon(
    totals_daemon: sinks.StatsdDaemon,
) -> None:
    """The issue measured 14 % of such a loop delivered; now every increment arrives, the
    gauges end at the last value set, and the daemon's timer counts (1/rate per sampled
    value) equal the observations."""
    m = facade("statsd", totals_daemon.host, totals_daemon.port, flush_interval_secs=0.05)
    memory = m.backend("memory")  # close() detaches the backends: read it after through this
    increments, observed = record_tight_loop(m)
    m.close()
    memory_drops = [r for r in memory.records(DROPS) if r.value]
    counter, size, latency = "exact.requests;method=get", "exact.size_bytes", "exact.latency"
    totals = totals_daemon.wait_for_totals(
        lambda t: (
            t.counters.get(counter) == increments
            and round(t.timer_counts.get(size, 0)) == observed
            and round(t.timer_counts.get(latency, 0)) == observed
        ),
        timeout=SETTLE_SECS,
    )
    diagnostics = f"{totals}\n{totals_daemon.diagnostics()}"
    assert totals.counters.get(counter) == increments, diagnostics
    assert totals.gauges.get("exact.level;sign=up") == LOOP - 10, diagnostics
    assert totals.gauges.get("exact.level;sign=down") == -(LOOP - 10) - 0.5, diagnostics
    assert_count(totals.timer_counts.get(size), observed, size)
    assert_count(totals.timer_counts.get(latency), observed, latency)
    assert not any(key.startswith("metricsfacade.") for key in totals.counters), diagnostics
    assert memory_drops == []
    assert totals_daemon.bad_lines_seen == 0, diagnostics
    assert totals_daemon.udp_drops() in (0, None), diagnostics


def test_datadog_tight_loop_arrives_exactly_at_a_dogstatsd_parser(
    udp_sink: sinks.UdpLineSink,
) -> None:
    """The same loop through the Datadog backend (packed ``h`` lines with ``|@rate``)."""
    m = facade("datadog", udp_sink.host, udp_sink.port, flush_interval_secs=0.05)
    memory = m.backend("memory")
    increments, observed = record_tight_loop(m)
    m.close()
    counter = ("exact.requests", (("method", "get"),))
    size, latency = ("exact.size_bytes", ()), ("exact.latency", ())
    view = AgentView.of(
        udp_sink.wait(
            lambda lines: AgentView.of(lines).counters.get(counter) == increments,
            timeout=SETTLE_SECS,
        )
    )
    assert view.counters == {counter: increments}, udp_sink.drops()
    assert view.gauges == {
        ("exact.level", (("sign", "up"),)): LOOP - 10,
        ("exact.level", (("sign", "down"),)): -(LOOP - 10) - 0.5,
    }
    assert_count(view.counts.get(size), observed, "exact.size_bytes")
    assert_count(view.counts.get(latency), observed, "exact.latency")
    assert set(view.values[size]) <= {float(i % 1000) for i in range(0, LOOP, 10)}
    assert set(view.values[latency]) <= {i / 8 * 1000 for i in range(8)}
    assert [r for r in memory.records(DROPS) if r.value] == []
    assert udp_sink.drops() in (0, None)


# -- 4 threads x 1,000,000 on one bound counter, plus a series each --------------------------


def record_from_threads(m: mf.Metrics) -> None:
    """4 threads, each 1,000,000 increments of one shared bound counter; every 4th iteration
    also 2 to its own series and, every 100th, an observation of a shared histogram."""
    requests = m.counter("exact_requests_total", "Requests", ["thread"])
    shared = requests.labels("shared")
    sizes = m.histogram("exact_size_bytes", "Sizes", buckets=[10, 100])
    start = threading.Barrier(THREADS)

    def work(n: int) -> None:
        own = requests.labels(f"t{n}")
        start.wait()
        for i in range(LOOP):
            shared.inc()
            if i % 4 == 0:
                own.inc(2)
                if i % 100 == 0:
                    sizes.observe(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


THREAD_OBSERVATIONS = THREADS * LOOP // 100


@pytest.mark.sink
def test_statsd_four_threads_one_bound_counter_exact_at_the_daemon(
    totals_daemon: sinks.StatsdDaemon,
) -> None:
    m = facade("statsd", totals_daemon.host, totals_daemon.port, flush_interval_secs=0.05)
    record_from_threads(m)
    m.close()
    expected = {"exact.requests;thread=shared": THREADS * LOOP} | {
        f"exact.requests;thread=t{n}": 2 * LOOP // 4 for n in range(THREADS)
    }
    totals = totals_daemon.wait_for_totals(
        lambda t: (
            all(t.counters.get(key) == value for key, value in expected.items())
            and round(t.timer_counts.get("exact.size_bytes", 0)) == THREAD_OBSERVATIONS
        ),
        timeout=SETTLE_SECS,
    )
    diagnostics = f"{totals}\n{totals_daemon.diagnostics()}"
    found = {key: value for key, value in totals.counters.items() if key.startswith("exact.")}
    assert found == expected, diagnostics
    assert_count(totals.timer_counts.get("exact.size_bytes"), THREAD_OBSERVATIONS, "sizes")
    assert totals_daemon.bad_lines_seen == 0, diagnostics


def test_datadog_four_threads_one_bound_counter_exact_at_a_dogstatsd_parser(
    udp_sink: sinks.UdpLineSink,
) -> None:
    m = facade("datadog", udp_sink.host, udp_sink.port, flush_interval_secs=0.05)
    record_from_threads(m)
    m.close()
    expected = {("exact.requests", (("thread", "shared"),)): THREADS * LOOP} | {
        ("exact.requests", (("thread", f"t{n}"),)): 2 * LOOP // 4 for n in range(THREADS)
    }
    view = AgentView.of(
        udp_sink.wait(lambda lines: AgentView.of(lines).counters == expected, SETTLE_SECS)
    )
    assert view.counters == expected, udp_sink.drops()
    assert_count(view.counts.get(("exact.size_bytes", ())), THREAD_OBSERVATIONS, "sizes")
    assert set(view.values[("exact.size_bytes", ())]) <= set(map(float, range(THREADS)))


# -- any interleaving of operations and flushes matches a model ------------------------------

amounts = st.one_of(
    st.integers(0, 10**12),
    st.floats(0, 1e12, allow_nan=False),
    st.sampled_from([0.1, 0.2, 0.3, 1e-9, 2**53]),
)
gauge_values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(-1e12, 1e12, allow_nan=False),
    st.sampled_from([-0.0, 0.5, -7.25]),
)
observations = st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.integers(0, 1), amounts),
        st.tuples(st.just("set"), st.integers(0, 1), gauge_values),
        st.tuples(st.just("inc_gauge"), st.integers(0, 1), st.floats(-1e6, 1e6)),
        st.tuples(st.just("dec_gauge"), st.integers(0, 1), st.floats(-1e6, 1e6)),
        st.tuples(st.just("observe"), st.integers(0, 1), observations),
        st.tuples(st.just("time"), st.just(0), st.floats(0, 1e4, allow_nan=False)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@attrs.define
class Model:
    counters: dict[str, float] = attrs.Factory(dict)
    gauges: dict[str, float] = attrs.Factory(dict)
    observed: dict[str, list[float]] = attrs.Factory(dict)


def run_operations(m: mf.Metrics, ops: list[tuple[str, int, float]]) -> Model:
    requests = m.counter("prop_requests_total", "Requests", ["n"])
    level = m.gauge("prop_level", "Level", ["n"])
    sizes = m.histogram("prop_size_bytes", "Sizes", ["n"], buckets=[1, 1000])
    latency = m.timer("prop_latency_seconds", "Latency")
    model = Model()
    for op, n, value in ops:
        if op == "inc":
            requests.labels(str(n)).inc(value)
            key = f"prop.requests|{n}"
            model.counters[key] = model.counters.get(key, 0.0) + value
        elif op == "set":
            level.labels(str(n)).set(value)
            model.gauges[f"prop.level|{n}"] = float(value)
        elif op in ("inc_gauge", "dec_gauge"):
            key = f"prop.level|{n}"
            delta = value if op == "inc_gauge" else -value
            (level.labels(str(n)).inc if op == "inc_gauge" else level.labels(str(n)).dec)(value)
            model.gauges[key] = model.gauges.get(key, 0.0) + delta
        elif op == "observe":
            sizes.labels(str(n)).observe(value)
            model.observed.setdefault(f"prop.size_bytes|{n}", []).append(float(value))
        elif op == "time":
            latency.observe(value)
            model.observed.setdefault("prop.latency|", []).append(value * 1000.0)
        else:
            m.flush()
    return model


def series_name(key: SeriesKey) -> str:
    """``prop.requests|1`` for ``("prop.requests", (("run", ..), ("n", "1")))``."""
    name, tags = key
    return f"{name}|{dict(tags).get('n', '')}"


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
@pytest.mark.parametrize("samples", [1000, 2])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_any_interleaving_of_operations_and_flushes_matches_a_model(
    udp_sink: sinks.UdpLineSink, backend: str, samples: int, ops: list[tuple[str, int, float]]
) -> None:
    """Counters: the agent's sum is the model's (``isclose(rel_tol=1e-12)``: summed per
    flush, then across flushes); gauges: the last value, exactly (StatsD: read with the
    daemon's delta rule); histograms and the timer: the agent's count (1/rate per value) is
    the number of observations, and every value it got was observed (all of them, exactly,
    while a flush holds at most ``samples``)."""
    run = f"r{time.monotonic_ns()}"
    m = facade(
        backend,
        udp_sink.host,
        udp_sink.port,
        common_labels={"run": run},
        max_samples_per_flush=samples,
    )
    try:
        model = run_operations(m, ops)
        m.counter("prop_end_total", "End of the run").inc()
    finally:
        m.close()

    def mine(lines: list[strict_statsd.Line]) -> list[strict_statsd.Line]:
        return [line for line in lines if ("run", run) in line.tags]

    end = ("prop.end", (("run", run),))
    # The end line is in close()'s last datagram, sent after every other: no settling.
    lines = mine(udp_sink.wait(lambda lines: end in AgentView.of(mine(lines)).counters, settle=0))
    view = AgentView.of(lines, statsd_gauges=backend == "statsd")
    assert view.counters.pop(end) == 1
    counters = {series_name(key): value for key, value in view.counters.items()}
    assert counters.keys() <= model.counters.keys()
    for key, total in model.counters.items():
        assert math.isclose(counters.get(key, 0.0), total, rel_tol=1e-12), (key, lines)
    assert {series_name(key): value for key, value in view.gauges.items()} == model.gauges
    counts = {series_name(key): value for key, value in view.counts.items()}
    values = {series_name(key): value for key, value in view.values.items()}
    assert counts.keys() == model.observed.keys()
    for key, observed in model.observed.items():
        assert_count(counts[key], len(observed), key)
        assert not Counter(values[key]) - Counter(observed), (key, lines)
        if samples >= len(observed):
            assert sorted(values[key]) == sorted(observed)
    assert all(line.rate is None or 0 < line.rate < 1 for line in lines)


# -- fork, exit without close(), absent agents ------------------------------------------------


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_fork_with_unsent_changes_on_the_same_series_sends_each_once(
    udp_sink: sinks.UdpLineSink, backend: str
) -> None:
    """The parent has unsent increments, observations and a gauge write on the series the
    child records to as well: the parent's lines carry the parent's changes (sent once, by
    the parent), the child's only its own; the agent's totals are the sums of both."""
    m = facade(backend, udp_sink.host, udp_sink.port)
    requests = m.counter("fork_requests_total", "Requests")
    sizes = m.histogram("fork_size_bytes", "Sizes", buckets=[10])
    level = m.gauge("fork_level", "Level")
    for _ in range(1000):
        requests.inc(3)
        sizes.observe(1)
    level.set(5)

    def in_child() -> int:
        for _ in range(10):
            requests.inc(7)
            sizes.observe(2)
        m.flush()
        return 0

    assert sinks.run_in_child(in_child) == 0
    m.close()
    counter, histogram, gauge = ("fork.requests", ()), ("fork.size_bytes", ()), ("fork.level", ())
    lines = udp_sink.wait(lambda lines: AgentView.of(lines).counters.get(counter) == 3070)
    view = AgentView.of(lines)
    assert view.counters == {counter: 3000 + 70}
    assert Counter(view.values[histogram]) == Counter({1.0: 1000, 2.0: 10})
    assert view.gauges == {gauge: 5}
    sources: dict[float, set[Any]] = {}
    for data, source in udp_sink.datagrams():
        for line in strict_statsd.parse_datagram(data):
            if line.name == "fork.requests":
                sources.setdefault(line.value, set()).add(source)
    assert sorted(line.value for line in lines if line.name == "fork.requests") == [70, 3000]
    assert sources[70] != sources[3000], "the child sent through the parent's socket"
    assert [line.value for line in lines if line.name == "fork.level"] == [5]


EXIT_SCRIPT = """
import os, sys
import metricsfacade as mf

m = mf.Metrics(
    {{"port": None, "backends": ["statsd"],
      "statsd": {{"host": "127.0.0.1", "port": {port}, "flush_interval_secs": 3600}}}},
    environ={{}},
)
requests = m.counter("exit_requests_total", "Requests", ["who"])
latency = m.timer("exit_latency_seconds", "Latency")
level = m.gauge("exit_level", "Level")
for i in range(100_000):
    requests.labels("parent").inc()
    latency.observe(i % 4 / 4)
level.set(1)
pid = os.fork()
if pid == 0:
    for i in range(50_000):
        requests.labels("child").inc()
        requests.labels("parent").inc(2)
        latency.observe(0.5)
    sys.exit(0)  # no close(): the exit flush sends what the child recorded
os.waitpid(pid, 0)
for i in range(20_000):
    requests.labels("parent").inc()
    latency.observe(0.25)
level.set(-3)
# no close(), no flush(): the exit flush sends what the parent recorded
"""


@pytest.mark.sink
def test_exit_without_close_sends_everything_once_from_parent_and_child(
    totals_daemon: sinks.StatsdDaemon, tmp_path: Path
) -> None:
    """A process and its forked child both end without ``close()`` or ``flush()``: the exit
    flush of each sends what it recorded, and nothing of the parent's twice."""
    script = tmp_path / "exit_without_close.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT.format(port=totals_daemon.port)))
    env = {**sinks.clean_environ(), "PYTHONPATH": str(support.REPO)}
    result = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, sinks.describe_run(result)
    expected = {
        "exit.requests;who=parent": 100_000 + 2 * 50_000 + 20_000,
        "exit.requests;who=child": 50_000,
    }
    observations = 100_000 + 50_000 + 20_000
    totals = totals_daemon.wait_for_totals(
        lambda t: (
            all(t.counters.get(key) == value for key, value in expected.items())
            and round(t.timer_counts.get("exit.latency", 0)) == observations
        ),
        timeout=SETTLE_SECS,
    )
    diagnostics = f"{totals}\n{totals_daemon.diagnostics()}\n{result.stderr}"
    found = {key: value for key, value in totals.counters.items() if key.startswith("exit.")}
    assert found == expected, diagnostics
    assert_count(totals.timer_counts.get("exit.latency"), observations, "exit.latency")
    assert totals.gauges.get("exit.level") == -3, diagnostics
    assert totals_daemon.bad_lines_seen == 0, diagnostics


def nonzero_drops(memory: Any, backend: str) -> dict[str, float]:
    """The memory backend's non-zero ``metricsfacade_backend_dropped_total`` by reason."""
    return {
        record.labels["reason"]: record.value
        for record in memory.records(DROPS)
        if record.labels["backend"] == backend and record.value
    }


def test_close_with_the_tcp_agent_absent_counts_every_line_of_the_last_flush() -> None:
    """StatsD over TCP, nothing listening: the lines of close()'s final flush (3 counters,
    2 gauges, 4 histogram values) are counted as dropped, none lost unseen."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    m = mf.Metrics(
        {
            "port": None,
            "backends": ["statsd", "memory"],
            "statsd": {"port": port, "protocol": "tcp", "flush_interval_secs": NEVER},
        },
        environ={},
    )
    requests = m.counter("absent_requests_total", "Requests", ["n"])
    for n in range(3):
        requests.labels(str(n)).inc(n + 1)
    m.gauge("absent_level", "Level").set(4)
    m.gauge("absent_depth", "Depth").set(2)
    for value in (1, 2, 3, 4):
        m.histogram("absent_size_bytes", "Sizes", buckets=[10]).observe(value)
    memory = m.backend("memory")
    m.close()
    assert nonzero_drops(memory, "statsd") == {"send_failed": 3 + 2 + 4}


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_udp_agent_absent_then_appearing_loses_nothing_once_it_listens(backend: str) -> None:
    """While no agent listens, each flush's line is dropped and counted, the very first
    datagram too: the kernel accepts it, and the ICMP "port unreachable" that comes back is
    heard on the next send, which counts both. Once an agent listens (and the 0.2 s backoff
    is over), every increment arrives, exactly; close() then counts nothing."""
    port = closed_udp_port()
    m = facade(backend, "127.0.0.1", port)
    requests = m.counter("late_requests_total", "Requests")
    memory = m.backend("memory")
    absent_flushes = 3
    for _ in range(absent_flushes):
        requests.inc(1000)
        m.flush()
        time.sleep(0.02)  # lets the ICMP error arrive
    dropped = nonzero_drops(memory, backend)
    assert sum(dropped.values()) == absent_flushes, dropped
    sink = sinks.UdpLineSink(port)
    try:
        time.sleep(0.5)  # past the backoff (0.1 s, then 0.2 s)
        for _ in range(50):
            requests.inc(3)
            m.flush()
        m.close()
        key = ("late.requests", ())
        view = AgentView.of(sink.wait(lambda lines: AgentView.of(lines).counters.get(key) == 150))
        assert view.counters == {key: 150}
        assert nonzero_drops(memory, backend) == dropped  # nothing more dropped once it listens
        assert memory.value("late_requests_total") == 1000 * absent_flushes + 150
    finally:
        sink.close()
