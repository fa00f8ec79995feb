"""Hostile inputs and hostile process lifecycles: fork, odd label values, odd names.

Each test reproduces a class of failure found by trying to break the facade; hypothesis
covers the class where a single example would not.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import require_module, strict_statsd

import metricsfacade as mf
from metricsfacade.backends.lines import dotted_name
from metricsfacade.spec import METRIC_NAME_RE, Kind, make_spec

require_module("prometheus_client")
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def exposition(m: mf.Metrics, accept: str | None = None) -> str:
    return m.backend("prometheus").render(accept)[0].decode()


def parses_both_ways(m: mf.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of the exposition; it must parse as text and as OpenMetrics."""
    list(openmetrics_families(exposition(m, OPENMETRICS)))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition(m))
        for sample in family.samples
    }


@pytest.fixture
def m() -> Iterator[mf.Metrics]:
    facade = mf.Metrics({"port": None, "backends": ["prometheus", "memory"]}, environ={})
    yield facade
    facade.close()


def dropped(m: mf.Metrics, metric: str, reason: str) -> float:
    try:
        return m.backend("memory").value(
            "metricsfacade_dropped_total", {"metric": metric, "reason": reason}
        )
    except KeyError:
        return 0.0


# -- fork ------------------------------------------------------------------------------------

#: Calls each thread makes between two forks of the test below.
STRIDE = 500


def test_a_child_forked_while_threads_create_series_never_hangs(m):
    """Three parent threads keep creating series (taking the facade's and the store's locks,
    then, past the series limit, the overflow path's) while the process forks; in the child,
    creating a series and rendering must not wait for a lock held by a thread that does not
    exist there. 100 trials, each bounded by an alarm.

    The threads run flat out up to each fork and pause while its child runs: the child only
    sees the locks as they were at the fork, and without the pause the three threads (and
    their fight over the GIL) leave the child a fraction of a CPU on two cores, so that the
    trials took 25 s on a quiet machine and over 140 s on a busy one. Before each fork every
    thread has made ``STRIDE`` more calls, so the forks still land among running threads,
    and the series limit is passed within the first few trials."""
    counter = m.counter("fork_requests_total", "h", labels=["n"])
    stop = threading.Event()
    running = threading.Event()
    calls = [0, 0, 0]

    def create_series(offset: int) -> None:
        n = 0
        while not stop.is_set():
            if not running.is_set():
                running.wait()
            counter.labels(f"{offset}-{n}").inc()  # past the series limit: the overflow path
            n += 1
            calls[offset] = n

    threads = [threading.Thread(target=create_series, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        for trial in range(100):
            before = list(calls)
            running.set()
            while any(now - then < STRIDE for now, then in zip(calls, before, strict=True)):
                time.sleep(0.001)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                signal.alarm(5)  # a hang ends the child with SIGALRM
                counter.labels(f"child-{trial}").inc()
                m.backend("prometheus").render(None)
                os._exit(0)
            running.clear()
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"trial {trial}: child hung or failed"
    finally:
        stop.set()
        running.set()
        for thread in threads:
            thread.join()
    overflowed = m.backend("memory").value(
        "metricsfacade_cardinality_overflow_total", {"metric": "fork_requests_total"}
    )
    assert overflowed > 0, "the threads never reached the overflow path"


class UdpSink:
    """Counter totals from every line received (a strict parser: malformed lines fail)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.totals: dict[str, float] = {}

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def total(self, name: str, expected: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while self.totals.get(name, 0.0) < expected and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.sock.recv(65_536)
            except TimeoutError:
                break
            for line in strict_statsd.parse_datagram(datagram):
                if line.type == "c":
                    self.totals[line.name] = self.totals.get(line.name, 0.0) + line.value
        self.sock.settimeout(0.3)  # whatever else arrives: nothing may be sent twice
        try:
            while True:
                for line in strict_statsd.parse_datagram(self.sock.recv(65_536)):
                    if line.type == "c":
                        self.totals[line.name] = self.totals.get(line.name, 0.0) + line.value
        except TimeoutError:
            pass
        return self.totals.get(name, 0.0)


PUSHED: mf.Metrics | None = None


def _increment_500() -> None:
    assert PUSHED is not None
    PUSHED.counter("mp_work_total", "h").inc(500)


def _increment_once(_item: int) -> int:
    assert PUSHED is not None
    PUSHED.counter("mp_work_total", "h").inc()
    return 0


@pytest.fixture
def pushed(request) -> Iterator[tuple[mf.Metrics, UdpSink]]:
    global PUSHED  # noqa: PLW0603 - the children reach the facade the way real code does
    sink = UdpSink()
    backend = request.param
    table = {"host": "127.0.0.1", "port": sink.port, "flush_interval_secs": 3600}
    PUSHED = mf.Metrics({"port": None, "backends": [backend], backend: table}, environ={})
    yield PUSHED, sink
    PUSHED.close()
    PUSHED = None
    sink.sock.close()


@pytest.mark.parametrize("pushed", ["statsd", "datadog"], indirect=True)
def test_a_multiprocessing_child_that_ends_with_os_exit_still_delivers(pushed):
    """multiprocessing children leave with os._exit (no atexit): their finalizers flush."""
    _, sink = pushed
    process = multiprocessing.get_context("fork").Process(target=_increment_500)
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert sink.total("mp.work", 500) == 500


@pytest.mark.parametrize("pushed", ["statsd", "datadog"], indirect=True)
def test_a_pool_used_in_a_with_block_delivers_every_increment(pushed):
    """The with block terminates the workers (SIGTERM): the facade's SIGTERM handler,
    inherited from the parent, flushes each worker before it dies."""
    _, sink = pushed
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert sum(pool.map(_increment_once, range(4000), chunksize=50)) == 0
    assert sink.total("mp.work", 4000) == 4000


# -- label values ------------------------------------------------------------------------------


def test_an_unencodable_label_value_never_breaks_the_scrape(m):
    """A lone surrogate (os.fsdecode of a non-UTF-8 file name) becomes U+FFFD."""
    gauge = m.gauge("hostile_files", "h", labels=["name"])
    gauge.labels(os.fsdecode(b"caf\xe9.txt")).set(2)
    gauge.labels("\ud800").set(3)
    samples = parses_both_ways(m)
    assert samples[("hostile_files", (("name", "caf\ufffd.txt"),))] == 2
    assert samples[("hostile_files", (("name", "\ufffd"),))] == 3


def test_a_negative_observation_into_a_non_negative_histogram_is_dropped(m):
    histogram = m.histogram("hostile_size_bytes", "h", buckets=[1, 10])
    histogram.observe(5)
    histogram.observe(-1)
    samples = parses_both_ways(m)  # OpenMetrics refuses a negative _sum
    assert samples[("hostile_size_bytes_sum", ())] == 5
    assert samples[("hostile_size_bytes_count", ())] == 1
    assert dropped(m, "hostile_size_bytes", "negative_value") == 1
    signed = m.histogram("hostile_delta", "h", buckets=[-1, 0, 1])
    signed.observe(-0.5)  # a histogram with a negative bucket takes negative values
    assert m.backend("memory").records("hostile_delta")[0].histogram.count == 1


@pytest.mark.parametrize("order", [(1, True, 1.0, "1"), ("1", 1.0, True, 1), (True, "1", 1, 1.0)])
def test_label_values_are_keyed_by_their_text_in_any_order(m, order):
    counter = m.counter("hostile_codes_total", "h", labels=["code"])
    for value in order:
        counter.labels(value).inc()
    samples = parses_both_ways(m)
    assert samples[("hostile_codes_total", (("code", "1"),))] == 2  # 1 and "1"
    assert samples[("hostile_codes_total", (("code", "True"),))] == 1
    assert samples[("hostile_codes_total", (("code", "1.0"),))] == 1


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


class Unhashable:
    def __hash__(self) -> int:
        raise RuntimeError("no hash")


def test_label_objects_that_raise_are_dropped_and_counted(m):
    counter = m.counter("hostile_objects_total", "h", labels=["thing"])
    counter.labels(Unprintable()).inc()
    counter.labels(Unhashable()).inc()
    counter.labels(thing=Unprintable()).inc()
    assert dropped(m, "hostile_objects_total", "invalid_label_value") == 3


def test_a_label_called_self_works_by_name(m):
    counter = m.counter("hostile_self_total", "h", labels=["self"])
    counter.labels(self="me").inc()
    mf.CustomMetrics(m).increment("hostile_custom_total", labels={"self": "me"})
    samples = parses_both_ways(m)
    assert samples[("hostile_self_total", (("self", "me"),))] == 1
    assert samples[("hostile_custom_total", (("self", "me"),))] == 1


def test_recording_by_a_bad_name_or_labels_is_counted_never_raised(m):
    custom = mf.CustomMetrics(m)
    custom.record(123, 1)  # type: ignore[arg-type]
    custom.increment("hostile_jobs_total", labels=[("a", "b")])  # type: ignore[arg-type]
    custom.set_gauge("hostile_level", 1, labels={1: "x"})  # type: ignore[dict-item]
    records = m.backend("memory").records("metricsfacade_dropped_total")
    assert sum(record.value for record in records if record.labels["metric"] == "custom") == 3


def test_a_declaration_with_labels_that_are_not_names_is_a_declaration_error(m):
    with pytest.raises(mf.DeclarationError, match="labels must be a list of names"):
        m.counter("hostile_total", "h", 5)  # type: ignore[arg-type]


def test_an_int_too_large_for_a_float_changes_nothing(m):
    histogram = m.histogram("hostile_huge", "h", buckets=[1])
    histogram.observe(10**400)
    m.gauge("hostile_huge_level", "h").set(10**400)
    assert m.backend("memory").records("hostile_huge")[0].histogram.count == 0
    assert dropped(m, "hostile_huge", "out_of_range") == 1
    assert dropped(m, "hostile_huge_level", "out_of_range") == 1


# -- StatsD names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("app_requests_total", Kind.COUNTER), ("app:requests_total", Kind.COUNTER)),
        (("job_seconds", Kind.TIMER), ("job", Kind.GAUGE)),
        (("a_b", Kind.GAUGE), ("a:b", Kind.GAUGE)),
    ],
)
def test_metrics_with_the_same_statsd_name_are_refused_naming_both(first, second):
    m = mf.Metrics()
    kinds = {Kind.COUNTER: m.counter, Kind.GAUGE: m.gauge, Kind.TIMER: m.timer}
    kinds[first[1]](first[0], "h")
    with pytest.raises(mf.DeclarationError, match="on StatsD and Datadog") as caught:
        kinds[second[1]](second[0], "h")
    assert repr(first[0]) in str(caught.value)
    assert repr(second[0]) in str(caught.value)


@settings(max_examples=500, deadline=None)
@given(
    name=st.from_regex(METRIC_NAME_RE, fullmatch=True),
    kind=st.sampled_from([Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM, Kind.TIMER]),
)
def test_every_valid_prometheus_name_gives_a_well_formed_statsd_name(name, kind):
    dotted = dotted_name(make_spec(name, "h", kind))
    assert dotted
    assert "" not in dotted.split("."), dotted
    line = strict_statsd.parse_line(f"{dotted}:1|c")  # the strict reader takes it
    assert line.name == dotted


# -- push delivery -----------------------------------------------------------------------------


def test_an_unresolvable_agent_host_is_counted_and_the_flusher_lives_on(monkeypatch):
    """DogStatsd takes its host from DD_AGENT_HOST, unchecked by our config: a 64-byte DNS
    label makes every send raise UnicodeError, which must be counted like a failed send."""
    monkeypatch.setenv("DD_AGENT_HOST", "a" * 64 + ".example")
    m = mf.Metrics({"port": None, "backends": ["datadog", "memory"]}, environ={})
    try:
        requests = m.counter("hostile_pushed_total", "h")
        for _ in range(3):
            requests.inc()
            m.flush()
        drops = m.backend("memory").records("metricsfacade_backend_dropped_total")
        assert sum(record.value for record in drops) >= 1
        alive = [t.name for t in threading.enumerate() if t.name == "metricsfacade-push"]
        assert alive == ["metricsfacade-push"]
    finally:
        m.close()


@pytest.mark.parametrize(
    "config",
    [
        {"bind": ""},
        {"tls_cert": "", "tls_key": ""},
        {"statsd": {"host": "a" * 64 + ".example"}},
        {"statsd": {"host": ""}},
        {"statsd": {"flush_interval_secs": 1e19}},
        {"datadog": {"flush_interval_secs": 1e19}},
        {"readiness_timeout_secs": 1e19},
        {"collection_interval_secs": 1e19},
        {"bind": "host\udce9"},
    ],
)
def test_settings_that_cannot_work_are_refused_at_configure(config):
    with pytest.raises(mf.ConfigError):
        mf.Metrics(config, environ={})


def test_a_flush_to_a_tcp_agent_that_never_reads_blocks_its_caller_briefly():
    """The agent accepts and never reads; a flush with far more than its buffers take
    fails at the 0.5 s send timeout (counted), and the next one skips it (backoff)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    table = {"protocol": "tcp", "port": listener.getsockname()[1], "flush_interval_secs": 3600}
    m = mf.Metrics(
        {
            "port": None,
            "backends": ["statsd", "memory"],
            "statsd": table,
            "cardinality_limit": 100_000,
        },
        environ={},
    )
    try:
        counter = m.counter("stalled_requests_total", "h", labels=["path"])
        for index in range(50_000):  # 50,000 lines of ~60 bytes: megabytes in one flush
            counter.labels(f"/{'x' * 30}/{index}").inc()
        started = time.monotonic()
        m.flush()
        first = time.monotonic() - started
        counter.labels("/again").inc()
        started = time.monotonic()
        m.flush()
        second = time.monotonic() - started
        drops = m.backend("memory").records("metricsfacade_backend_dropped_total")
        reasons = {record.labels["reason"] for record in drops if record.value}
        assert "send_failed" in reasons, drops
        assert first < 2.0, f"the first flush blocked its caller {first:.2f} s"
        assert second < 0.5, f"a flush during the backoff blocked {second:.2f} s"
    finally:
        m.close()
        listener.close()


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts the walks over it."""

    walks = 0

    def values(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().values()

    def items(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().items()

    def __iter__(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().__iter__()


def test_declaring_never_walks_the_declared_metrics():
    """Declaring 2,000 custom metrics by name does dictionary lookups only: no declaration
    walks the metrics declared before it (that made 10,000 declarations take 109 s)."""
    m = mf.Metrics({"port": None, "backends": ["memory"]}, environ={})
    try:
        m._declarations._handles = CountingDict(m._declarations._handles)
        CountingDict.walks = 0
        custom = mf.CustomMetrics(m)
        for index in range(2000):
            custom.increment(f"hostile_job_{index}_total")
        assert CountingDict.walks == 0
        assert len(m._declarations._handles) >= 2000
    finally:
        m.close()
