"""What the multi-process tests read and check: a scrape of a test app (``apps/``) together
with the metric files and the processes alive around it, and the values the requests that
got a 200 imply."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from support import Samples, http_get, samples, servers

#: The test apps, on the servers' PYTHONPATH.
APPS = Path(__file__).resolve().parent / "apps"
#: A live process's file, and the archive of dead ones (``*.tmp`` during compaction: ignored).
METRIC_FILE_SUFFIXES = (".mfw", ".mfa")
#: mp_value's finite buckets (see apps/mp_common.py); /work?v=N observes N * 0.25.
BUCKETS = (0.1, 0.3, 0.6, 1.0)


def metric_files(directory: Path) -> list[str]:
    """The ``*.mfw`` and ``*.mfa`` files in ``directory``, sorted."""
    try:
        names = [entry.name for entry in directory.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(METRIC_FILE_SUFFIXES))


@dataclass
class Snapshot:
    """One scrape, the files listed right after it, and every process that was alive at
    some moment between just before the scrape and that listing."""

    text: str
    samples: Samples
    files: list[str]
    processes: set[int]

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str) -> float:
        return sum(self.series(name).values())

    def requests(self) -> dict[str, float]:
        """``mp_requests_total`` by ``v``."""
        return {
            dict(labels)["v"]: value for labels, value in self.series("mp_requests_total").items()
        }

    def buckets(self) -> dict[float, float]:
        """``mp_value_bucket`` by ``le`` (a number, ``inf`` for ``+Inf``: "1" and "1.0" are
        one bound)."""
        series = self.series("mp_value_bucket").items()
        return {float(dict(labels)["le"]): value for labels, value in series}

    def histogram_problems(self) -> list[str]:
        """What is wrong with mp_value in this scrape: +Inf bucket != _count, buckets not
        cumulative."""
        problems = []
        buckets = self.buckets()
        count = self.value("mp_value_count") or 0.0
        if buckets.get(math.inf, 0.0) != count:
            problems.append(f"+Inf bucket {buckets.get(math.inf)} != _count {count}")
        ordered = sorted(buckets.items())
        if [value for _, value in ordered] != sorted(value for _, value in ordered):
            problems.append(f"buckets not cumulative: {ordered}")
        return problems

    def monotonic_problems(self, earlier: Snapshot) -> list[str]:
        """Every counter-like sample (mp_requests_total, mp_value's buckets, _count and _sum,
        mp_imports_total) that is lower than in ``earlier``, or gone."""
        problems = []
        for (name, labels), before in earlier.samples.items():
            if not name.startswith(("mp_requests_total", "mp_value", "mp_imports_total")):
                continue
            now = self.samples.get((name, labels))
            if now is None or now < before:
                problems.append(f"{name}{dict(labels)}: {before} -> {now}")
        return problems

    def file_bound_problem(self) -> str:
        """Set when there are more metric files than live processes + 1 (the archive)."""
        if len(self.files) <= len(self.processes) + 1:
            return ""
        return f"{len(self.files)} files {self.files} for processes {sorted(self.processes)}"


@dataclass
class Service:
    """A running test app: its server, its multi-process directory, and whether the master
    process itself configured the facade (the app imported before forking: ``--preload``)."""

    setup: servers.Setup
    server: servers.Server
    metrics_dir: Path
    imports_log: Path  # one line per import of the app (see apps/mp_common.py)
    master_records: bool

    def imports(self) -> int:
        """How many times a process imported the app so far."""
        try:
            return len(self.imports_log.read_text().splitlines())
        except FileNotFoundError:
            return 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def metrics_url(self) -> str:
        return f"{self.server.url}/metrics/"

    def processes(self) -> set[int]:
        """The processes that record: the live workers, and the master if it does."""
        return self.server.workers() | ({self.server.master} if self.master_records else set())

    def snapshot(self) -> Snapshot:
        before = self.processes()
        # Not support.scrape: its 5 s timeout is too short while every worker restarts.
        status, _, body = http_get(self.metrics_url, timeout=servers.REQUEST_TIMEOUT_SECS)
        assert status == 200, f"GET {self.metrics_url} answered {status}: {body[:300]!r}"
        text = body.decode()
        files = metric_files(self.metrics_dir)
        after = self.processes()
        return Snapshot(text, samples(text), files, before | after)

    def get(self, path: str) -> tuple[int, str]:
        status, _, body = http_get(f"{self.url}{path}", timeout=servers.REQUEST_TIMEOUT_SECS)
        return status, body.decode()


@dataclass
class Expected:
    """What the exposition must hold after ``/work?v=N`` requests that got a 200."""

    requests: dict[str, float]
    count: float
    sum: float
    buckets: dict[float, float]

    @classmethod
    def of(cls, values: Iterable[int]) -> Expected:
        by_value = Counter(values)
        observed = [v * 0.25 for v in by_value.elements()]
        buckets = {bound: float(sum(o <= bound for o in observed)) for bound in BUCKETS}
        buckets[math.inf] = float(len(observed))
        return cls(
            {str(v): float(n) for v, n in sorted(by_value.items())},
            float(len(observed)),
            math.fsum(observed),
            buckets,
        )

    def problems(self, snapshot: Snapshot) -> list[str]:
        found = {
            "requests": snapshot.requests(),
            "count": snapshot.value("mp_value_count"),
            "sum": snapshot.value("mp_value_sum"),
            "buckets": snapshot.buckets(),
        }
        wanted = {
            "requests": self.requests,
            "count": self.count,
            "sum": self.sum,
            "buckets": self.buckets,
        }
        return [
            f"{key}: scraped {found[key]}, expected {wanted[key]}"
            for key in wanted
            if found[key] != wanted[key]
        ]


def run_load_with_kills(service: Service, total: int, kills: int) -> tuple[list[int], list[int]]:
    """Send ``total`` ``/work?v=i%4`` requests from two threads; at every ``1/(kills+1)`` of
    them, pause (no request in flight) and SIGKILL the live worker that answered last. Returns
    the ``v`` of every request that got a 200, and the pids killed. Every answer is a 200 or
    no answer at all (a connection closed by a recycling or killed worker)."""
    load = servers.Load(lambda i: f"{service.url}/work?v={i % 4}", total).start()
    victims: list[int] = []
    for k in range(1, kills + 1):
        load.wait_done(total * k // (kills + 1), timeout=120)
        answered = load.pause()
        victims.append(kill_last_server(service, answered))
        load.resume()
    responses = load.join(timeout=180)
    statuses = {r.status for r in responses}
    assert statuses <= {0, 200}, f"unexpected statuses {statuses}"
    failed = [r.error for r in responses if r.status != 200]
    # Connections a worker closes as it recycles are the only expected failures.
    assert len(failed) <= total // 10, f"{len(failed)} requests failed: {failed[:10]}"
    ok = sorted((r for r in responses if r.status == 200), key=lambda r: r.index)
    pids = {int(r.body) for r in ok}
    assert not pids & {service.server.master}, "the master answered a request"
    # Recycling happened: many more workers served than run at once.
    assert len(pids) >= service.setup.workers + 4, f"only workers {sorted(pids)} served"
    return [r.index % 4 for r in ok], victims


def kill_last_server(service: Service, answered: list[servers.Response]) -> int:
    """SIGKILL the live worker that answered a ``/work`` request last (any worker when none
    of those is alive); returns its pid."""
    for _ in range(5):
        workers = service.server.workers()
        last = [int(r.body) for r in sorted(answered, key=lambda r: r.finished) if r.status == 200]
        served = [pid for pid in reversed(last) if pid in workers]
        victim = served[0] if served else min(workers)
        # It may have exited meanwhile (recycled after a scrape): then pick again.
        if servers.kill_and_wait(victim):
            return victim
    raise AssertionError(f"no worker to kill among {service.server.workers()}")
