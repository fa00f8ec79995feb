"""The Prometheus backend's multi-process mode, with real forked processes.

Each worker writes its own file in ``multiprocess_dir``; a scrape in any process merges them.
The real web servers (gunicorn, uvicorn) are in ``tests/multiprocess``; here processes are
forked directly, so the tests can kill them at exact points.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support import eventually, require_module, samples, scrape

import metricsfacade as mf
from metricsfacade.errors import ConfigError, DeclarationError
from metricsfacade.shadowcat import SystemCollector

require_module("prometheus_client")


def config_for(directory: Path, **extra: object) -> dict[str, object]:
    return {
        "port": None,
        "backends": ["prometheus"],
        "prometheus": {"multiprocess_dir": str(directory)},
        **extra,
    }


class Child:
    """A forked process that runs ``work``, then exits, or waits for ``release()`` first."""

    def __init__(self, work: Callable[[], None], *, hold: bool = False) -> None:
        release_read, self._release = os.pipe()
        ready_read, ready_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            status = 0
            try:
                work()
                os.write(ready_write, b"x")
                if hold:
                    os.read(release_read, 1)
            except BaseException:
                status = 1
            os._exit(status)
        os.close(release_read)
        os.close(ready_write)
        done = os.read(ready_read, 1)  # the work is done (or the child failed)
        os.close(ready_read)
        assert done == b"x", "the child's work failed"
        self.exit_status: int | None = None

    def release(self) -> None:
        os.write(self._release, b"x")
        self.wait()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.wait()

    def wait(self) -> None:
        if self.exit_status is None:
            _, self.exit_status = os.waitpid(self.pid, 0)
            os.close(self._release)


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def worker_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".mfw", ".mfa"))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "metrics"


@pytest.fixture
def metrics(directory: Path) -> Iterator[mf.Metrics]:
    with mf.Metrics(config_for(directory)) as metrics:
        yield metrics


def test_a_scrape_sums_every_workers_counters_and_histograms(
    metrics: mf.Metrics, directory: Path
) -> None:
    requests = metrics.counter("requests_total", "Requests", ["code"])
    latency = metrics.histogram("latency_seconds", "Latency", buckets=[0.1, 1.0])
    requests.labels("200").inc()
    latency.observe(0.05)

    def work() -> None:
        requests.labels("200").inc(10)
        requests.labels("500").inc()
        latency.observe(0.5)
        latency.observe(7)

    children = [Child(work) for _ in range(3)]
    for child in children:
        child.wait()
    text = scrape(metrics)
    assert value(text, "requests_total", code="200") == 31
    assert value(text, "requests_total", code="500") == 3
    assert value(text, "latency_seconds_bucket", le="0.1") == 1
    assert value(text, "latency_seconds_bucket", le="1.0") == 4
    assert value(text, "latency_seconds_bucket", le="+Inf") == 7
    assert value(text, "latency_seconds_count") == 7
    assert value(text, "latency_seconds_sum") == pytest.approx(0.05 + 3 * 7.5)


def test_dead_workers_are_compacted_into_one_archive_and_totals_never_go_back(
    metrics: mf.Metrics, directory: Path
) -> None:
    requests = metrics.counter("requests_total", "Requests")
    seen = 0.0
    for made in range(1, 31):
        Child(requests.inc).wait()
        total = value(scrape(metrics), "requests_total")
        assert total == made >= seen
        seen = total
        # this process's file and the archive: the 30 dead workers left nothing else
        assert len(worker_files(directory)) <= 2
    assert worker_files(directory)[-1] == "archive.mfa"


def test_a_compaction_that_fails_leaves_the_scrape_served_and_is_tried_again(
    metrics: mf.Metrics, directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    requests = metrics.counter("requests_total", "Requests")
    (directory / "archive.tmp").mkdir()  # the new archive cannot be written
    Child(lambda: requests.inc(3)).wait()
    assert value(scrape(metrics), "requests_total") == 3
    assert "compacting" in caplog.text
    assert len(worker_files(directory)) == 2  # this process's and the dead worker's
    (directory / "archive.tmp").rmdir()
    assert value(scrape(metrics), "requests_total") == 3
    assert value(scrape(metrics), "requests_total") == 3
    assert worker_files(directory)[-1] == "archive.mfa"
    assert len(worker_files(directory)) == 2  # this process's and the archive


def test_a_worker_killed_with_sigkill_loses_nothing(metrics: mf.Metrics, directory: Path) -> None:
    requests = metrics.counter("requests_total", "Requests")
    latency = metrics.histogram("latency_seconds", "Latency", buckets=[1.0])

    def work() -> None:
        for _ in range(1000):
            requests.inc()
            latency.observe(0.5)

    Child(work, hold=True).kill()
    text = scrape(metrics)
    assert value(text, "requests_total") == 1000
    assert value(text, "latency_seconds_count") == 1000
    assert value(text, "latency_seconds_sum") == 500


def test_gauges_merge_by_their_mode_over_live_workers_only(
    metrics: mf.Metrics, directory: Path
) -> None:
    gauges = {
        mode: metrics.gauge(f"g_{mode}", mode, multiprocess_mode=mode)
        for mode in ("sum", "max", "min", "latest", "worker")
    }
    held = []
    for setting in (5, 2, 9):
        held.append(Child(lambda v=setting: [g.set(v) for g in gauges.values()], hold=True))
    text = scrape(metrics)
    assert value(text, "g_sum") == 16
    assert value(text, "g_max") == 9
    assert value(text, "g_min") == 0  # this process's gauges are 0: it is a live worker too
    assert value(text, "g_latest") == 9
    per_worker = {
        dict(labels)["worker"]: v
        for (name, labels), v in samples(text).items()
        if name == "g_worker"
    }
    assert per_worker == {
        str(os.getpid()): 0,
        **{str(child.pid): v for child, v in zip(held, (5, 2, 9), strict=True)},
    }
    held[2].kill()
    held[0].release()
    text = scrape(metrics)
    assert value(text, "g_sum") == 2
    assert value(text, "g_max") == 2
    assert {dict(labels)["worker"] for (name, labels) in samples(text) if name == "g_worker"} == {
        str(os.getpid()),
        str(held[1].pid),
    }
    held[1].release()


def test_the_cardinality_limit_holds_over_all_workers(directory: Path) -> None:
    with mf.Metrics(config_for(directory, cardinality_limit=5)) as metrics:
        users = metrics.counter("logins_total", "Logins", ["user"])
        users.labels("shared").inc()

        def work(first: int) -> Callable[[], None]:
            return lambda: [users.labels(str(n)).inc() for n in range(first, first + 4)]

        Child(work(0)).wait()
        Child(work(100)).wait()
        found = {
            dict(labels)["user"]: v
            for (name, labels), v in samples(scrape(metrics)).items()
            if name == "logins_total"
        }
    # "shared" and the first worker's 4 fill the 5; the second worker's 4 fold into one
    assert found == {"shared": 1, "0": 1, "1": 1, "2": 1, "3": 1, "__overflow__": 4}


def test_a_gauge_mode_is_validated_at_declaration(metrics: mf.Metrics) -> None:
    with pytest.raises(DeclarationError, match="multiprocess_mode must be one of"):
        metrics.gauge("g", "g", multiprocess_mode="average")
    with pytest.raises(DeclarationError, match="already has"):
        metrics.gauge("g", "g", ["worker"], multiprocess_mode="worker")
    metrics.gauge("g", "g", multiprocess_mode="max")
    with pytest.raises(DeclarationError, match="conflicts"):
        metrics.gauge("g", "g", multiprocess_mode="min")


def test_the_directory_comes_from_the_environment_and_the_global_registry_is_refused(
    tmp_path: Path,
) -> None:
    environ = {"METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR": str(tmp_path / "env")}
    with mf.Metrics({"port": None, "backends": ["prometheus"]}, environ=environ) as metrics:
        metrics.counter("c_total", "c").inc()
        assert [Path(name).suffix for name in worker_files(tmp_path / "env")] == [".mfw"]
    refused = config_for(tmp_path)
    refused["prometheus"] = {"multiprocess_dir": str(tmp_path), "registry": "global"}
    with pytest.raises(ConfigError, match="registry = 'own'"):
        mf.Metrics(refused)


def test_files_that_are_not_ours_are_ignored_and_a_previous_runs_files_are_kept(
    directory: Path,
) -> None:
    directory.mkdir()
    (directory / "garbage.mfw").write_bytes(b"not a metrics file at all")
    (directory / "empty.mfw").write_bytes(b"")

    def previous_run() -> None:
        with mf.Metrics(config_for(directory)) as old:
            old.counter("requests_total", "Requests").inc(5)

    Child(previous_run).wait()
    with mf.Metrics(config_for(directory)) as metrics:
        metrics.counter("requests_total", "Requests").inc()
        assert value(scrape(metrics), "requests_total") == 6


def test_a_metric_whose_buckets_changed_serves_the_newest_declaration(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def old_release() -> None:
        with mf.Metrics(config_for(directory)) as old:
            old.histogram("latency_seconds", "Latency", buckets=[1.0]).observe(0.5)

    old = Child(old_release, hold=True)  # still live: its file is read, not archived
    with mf.Metrics(config_for(directory)) as metrics:
        metrics.histogram("latency_seconds", "Latency", buckets=[0.5, 2.0]).observe(1)
        text = scrape(metrics)
    old.release()
    assert value(text, "latency_seconds_bucket", le="2.0") == 1
    assert value(text, "latency_seconds_count") == 1
    assert "different labels, buckets or modes" in caplog.text


def test_new_default_buckets_start_a_histogram_again_in_its_file(directory: Path) -> None:
    with mf.Metrics(config_for(directory, histogram_buckets=[1.0, 2.0])) as metrics:
        latency = metrics.histogram("latency_seconds", "Latency")
        latency.observe(1.5)
        metrics.configure(config_for(directory, histogram_buckets=[5.0]))
        latency.observe(3)
        text = scrape(metrics)
    assert value(text, "latency_seconds_bucket", le="5.0") == 1
    assert value(text, "latency_seconds_bucket", le="2.0") == 0  # the old layout is gone
    assert value(text, "latency_seconds_count") == 1


def test_eight_workers_record_while_another_process_scrapes(
    metrics: mf.Metrics, directory: Path
) -> None:
    """8 workers x 100,000 increments and observations on shared series, scraped all the
    while: totals exact, never going back, and every histogram consistent (+Inf = count)."""
    requests = metrics.counter("requests_total", "Requests", ["route"])
    latency = metrics.histogram("latency_seconds", "Latency", ["route"], buckets=[0.5, 1.5])
    per_worker = 100_000

    def work() -> None:
        count, observe = requests.labels("/").inc, latency.labels("/").observe
        for i in range(per_worker):
            count()
            observe(i % 3)

    problems: list[str] = []
    finished = threading.Event()
    scrapes = [0]

    def scrape_all_the_while() -> None:
        previous = 0.0
        while not finished.is_set():
            found = samples(scrape(metrics))
            total = found.get(("requests_total", frozenset({("route", "/")})), 0.0)
            count = found.get(("latency_seconds_count", frozenset({("route", "/")})), 0.0)
            infinite = found.get(
                ("latency_seconds_bucket", frozenset({("route", "/"), ("le", "+Inf")})), 0.0
            )
            if total < previous:
                problems.append(f"went back from {previous} to {total}")
            if infinite != count:
                problems.append(f"+Inf {infinite} != count {count}")
            previous = total
            scrapes[0] += 1

    # the scraper is a thread of this process; the workers are other processes
    scraper = threading.Thread(target=scrape_all_the_while)
    scraper.start()
    try:
        pids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                status = 0
                try:
                    work()
                except BaseException:
                    status = 1
                os._exit(status)
            pids.append(pid)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
    finally:
        finished.set()
        scraper.join()
    assert problems == []
    assert scrapes[0] > 1
    text = scrape(metrics)
    assert value(text, "requests_total", route="/") == 8 * per_worker
    assert value(text, "latency_seconds_count", route="/") == 8 * per_worker
    assert value(text, "latency_seconds_bucket", route="/", le="0.5") == 8 * 33_334
    assert value(text, "latency_seconds_sum", route="/") == 8 * (33_333 * 1 + 33_333 * 2)
    assert len(worker_files(directory)) <= 2


# -- any order of the calls people make -------------------------------------------------------


class Sequences(RuleBasedStateMachine):
    """Declare, configure, record, fork, kill, reconfigure and close in any order: a scrape
    always shows exactly what every process recorded, and never less than before."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="mf-sequences-"))
        self.metrics = mf.Metrics()
        self.counter = self.metrics.counter("events_total", "Events", ["kind"])
        self.configured = False
        self.expected: dict[str, float] = {}
        self.held: list[Child] = []
        self.last_seen: dict[str, float] = {}

    def _record(self, kind: str, amount: int) -> None:
        if self.configured:
            self.expected[kind] = self.expected.get(kind, 0) + amount

    @rule()
    def configure(self) -> None:
        self.metrics.configure(config_for(self.directory))
        self.configured = True

    @rule()
    def close(self) -> None:
        self.metrics.close()
        self.configured = False

    @rule(kind=st.sampled_from(["a", "b"]), amount=st.integers(1, 5))
    def record_here(self, kind: str, amount: int) -> None:
        self.counter.labels(kind).inc(amount)
        self._record(kind, amount)

    @rule(kind=st.sampled_from(["a", "b"]), amount=st.integers(1, 5), hold=st.booleans())
    def record_in_a_forked_worker(self, kind: str, amount: int, hold: bool) -> None:
        child = Child(lambda: self.counter.labels(kind).inc(amount), hold=hold)
        self._record(kind, amount)
        if hold:
            self.held.append(child)
        else:
            child.wait()

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10), kill=st.booleans())
    def end_a_worker(self, index: int, kill: bool) -> None:
        child = self.held.pop(index % len(self.held))
        child.kill() if kill else child.release()

    @precondition(lambda self: self.configured)
    @invariant()
    def a_scrape_shows_every_recording(self) -> None:
        text = scrape(self.metrics)
        for kind in ("a", "b"):
            seen = value(text, "events_total", kind=kind)
            assert seen == self.expected.get(kind, 0)
            assert seen >= self.last_seen.get(kind, 0)
            self.last_seen[kind] = seen
        assert len(worker_files(self.directory)) <= len(self.held) + 2

    def teardown(self) -> None:
        for child in self.held:
            child.kill()
        self.metrics.close()


TestSequences = Sequences.TestCase
TestSequences.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)


def test_two_facades_of_one_process_write_files_of_their_own(directory: Path) -> None:
    """Their series share names (metricsfacade's own metrics always do): one file would
    make each overwrite the other's values."""
    with mf.Metrics(config_for(directory)) as first, mf.Metrics(config_for(directory)) as second:
        first.counter("requests_total", "Requests").inc(2)
        second.counter("requests_total", "Requests").inc(3)
        assert value(scrape(first), "requests_total") == 5
        assert len([name for name in worker_files(directory) if name.endswith(".mfw")]) == 2


def test_the_system_collector_refreshes_each_worker_on_a_thread(directory: Path) -> None:
    """A scrape served by another process does not run this one's collection: in
    multi-process mode the collector runs on a thread of its own, as for push backends."""
    psutil = require_module("psutil")
    config = config_for(directory, collection_interval_secs=0.05)
    with mf.Metrics(config) as worker, mf.Metrics(config) as scraper:
        collector = SystemCollector(worker)
        assert "metricsfacade-system-collector" in {t.name for t in threading.enumerate()}
        rss = psutil.Process().memory_info().rss

        def collected() -> bool:
            text = scrape(scraper)
            memory = value(text, "shadowcat_memory_usage_bytes")
            return 0.5 * rss < memory < 2 * rss and value(text, "shadowcat_uptime_seconds") > 0

        eventually(collected)
        collector.stop()
