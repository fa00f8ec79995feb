"""Multi-process scrapes and recordings: the facade next to prometheus-client's multiprocess mode.

The Prometheus backend's multi-process mode (``multiprocess_dir``) and prometheus-client's own
(``PROMETHEUS_MULTIPROC_DIR``), side by side in one run.

    python benchmarks/bench_multiprocess.py [--rounds N] [--number N] [--json FILE]

1. One process: a scrape of 10,000 counter series (and of 1,000 histogram series), the
   facade's ``render`` against ``generate_latest`` on a registry holding the same series.
2. 16 live workers, each recording the same 10,000 counter series (merged: 10,000): a
   scrape in the parent, which declares them too, against ``generate_latest`` over
   prometheus-client's ``MultiProcessCollector``. prometheus-client reads
   ``PROMETHEUS_MULTIPROC_DIR`` when it is imported, so its side runs in a subprocess of
   this script (``--pc-side DIR``), driven step by step from here.
3. Then 1,000 short-lived workers, one after another, each recording 100 of the series
   (in turn), forked from a master process that declared the counter and holds no series
   (as gunicorn's arbiter): the facade's side is scraped every 50 of them (a scrape folds
   dead workers' files into the archive); then both are timed, file counts reported, and
   every merged series checked against what was recorded.
4. ns per bound counter ``inc()`` (histogram ``observe()``) of a facade with
   ``multiprocess_dir`` against one without, in one process.

Timed pairs alternate in order over ``--rounds`` rounds; the table shows medians, and ratios
are medians of the per-round ratios. ``--number`` is the recordings per round of (4).
Prints figures and whether each target was met: it is not a pass/fail test.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any, NoReturn, Protocol

import prometheus_client
from harness import interleaved_ns, run
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client import Counter as RawCounter
from prometheus_client import Histogram as RawHistogram

import metricsfacade as mf

CODES = ("200", "201", "204", "301", "304", "400", "401", "403", "404", "500")
ROUTES = 1_000
#: 10,000 label sets (route, code)
LABELS = [(f"/api/v1/route{route}", code) for route in range(ROUTES) for code in CODES]
SERIES = len(LABELS)
WORKERS = 16
RECYCLED = 1_000
PER_RECYCLED = 100  # series each recycled worker records into, in turn over LABELS
SCRAPE_EVERY = 50  # recycled workers between two scrapes of the facade's side
#: prometheus-client's default buckets (+Inf implicit), for both sides of the histogram case
BUCKETS = tuple(bound for bound in RawHistogram.DEFAULT_BUCKETS if bound != float("inf"))
NAME = "bench_requests"  # exposed as bench_requests_total by both libraries
HELP = "Requests."
TIMEOUT = 120.0  # seconds to wait for a child before giving up (and killing everything)

SINGLE_MS, SINGLE_RATIO = 25.0, 0.15
MULTI_MS, MULTI_RATIO = 250.0, 0.1
RECORD_RATIO = 1.5
FILES = "ours: *.mfw and archive.mfa (not series.keys); prometheus-client: *.db"


class Incrementable(Protocol):
    def inc(self) -> None: ...


def _disable_created() -> bool:
    """Leave out ``_created`` samples (prometheus-client >= 0.17); False if not available."""
    disable = getattr(prometheus_client, "disable_created_metrics", None)
    if disable is None:
        return False
    disable()
    return True


def _facade(multiprocess_dir: str | None = None) -> mf.Metrics:
    config: dict[str, Any] = {
        "port": None,
        "backends": ["prometheus"],
        "cardinality_limit": 100_000,
    }
    if multiprocess_dir is not None:
        config["prometheus"] = {"multiprocess_dir": multiprocess_dir}
    return mf.Metrics(config, environ={})


def _renderer(facade: mf.Metrics) -> Callable[[], bytes]:
    backend = facade.pull_backend()
    assert backend is not None, "the prometheus backend is configured"
    return lambda: backend.render(None)[0]


def counter_totals(exposition: bytes) -> tuple[int, float, float, float]:
    """The counter's series in a text exposition: how many, their sum, min and max."""
    prefix = f"{NAME}_total{{".encode()
    lines = exposition.splitlines()
    values = [float(line.rsplit(b" ", 1)[1]) for line in lines if line.startswith(prefix)]
    if not values:
        return 0, 0.0, 0.0, 0.0
    return len(values), sum(values), min(values), max(values)


def _family_lines(exposition: bytes, name: str) -> list[bytes]:
    """The lines of one family (HELP, TYPE, samples): the facade serves its own too."""
    return [line for line in exposition.splitlines() if name.encode() in line]


# -- children ------------------------------------------------------------------------------


def _in_child(work: Callable[[], None]) -> NoReturn:
    """Run ``work`` in a forked child and leave without running the parent's cleanup."""
    try:
        work()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _read_exact(fd: int, size: int, what: str) -> bytes:
    """``size`` bytes from a pipe, or an error after TIMEOUT seconds or at end of file."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer from {what} in {TIMEOUT:.0f} s")
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise RuntimeError(f"{what} ended early")
        data += chunk
    return data


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Side:
    """One library's multi-process run, driven from the process that scrapes: a master
    that forks the recycled workers (forked before any series exists), the 10,000 series
    bound here, 16 live workers forked from here, and scrapes."""

    def __init__(
        self,
        directory: str,
        labels: Callable[[str, str], Incrementable],
        render: Callable[[], bytes],
        suffixes: tuple[str, ...],
    ) -> None:
        self.directory = directory
        self._labels = labels
        self._render = render
        self._suffixes = suffixes
        self._pids: list[int] = []
        self._fds: list[int] = []
        self._master = 0
        self._release_w = -1

    def setup(self) -> float:
        """Fork the master, then bind the 10,000 series here; the binding's seconds."""
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        self._fds += [self._cmd_w, self._reply_r]
        self._master = os.fork()
        if self._master == 0:
            _close(self._cmd_w, self._reply_r)
            _in_child(lambda: self._master_loop(cmd_r, reply_w))
        self._pids.append(self._master)
        _close(cmd_r, reply_w)
        start = time.perf_counter()
        self._children = [self._labels(*label_values) for label_values in LABELS]
        return time.perf_counter() - start

    def _master_loop(self, cmd_r: int, reply_w: int) -> None:
        while True:
            command = os.read(cmd_r, 8)
            if len(command) < 8:
                return
            first, count = struct.unpack("=II", command)
            failed = 0
            for worker in range(first, first + count):
                pid = os.fork()
                if pid == 0:
                    _close(cmd_r, reply_w)
                    _in_child(functools.partial(self._recycled_work, worker))
                _, status = os.waitpid(pid, 0)
                failed += os.waitstatus_to_exitcode(status) != 0
            os.write(reply_w, b"k" if not failed else b"e")

    def _recycled_work(self, worker: int) -> None:
        start = worker * PER_RECYCLED
        for index in range(start, start + PER_RECYCLED):
            self._labels(*LABELS[index % SERIES]).inc()

    def start_workers(self) -> float:
        """Fork the 16 workers; seconds until every one has recorded its 10,000 series."""
        ready_r, ready_w = os.pipe()
        release_r, self._release_w = os.pipe()
        self._fds.append(self._release_w)
        start = time.perf_counter()
        try:
            for _ in range(WORKERS):
                pid = os.fork()
                if pid == 0:
                    _close(ready_r, *self._fds)
                    _in_child(lambda: self._live_work(ready_w, release_r))
                self._pids.append(pid)
            _read_exact(ready_r, WORKERS, "the live workers")
        finally:
            _close(ready_r, ready_w, release_r)
        return time.perf_counter() - start

    def _live_work(self, ready_w: int, release_r: int) -> None:
        for child in self._children:
            child.inc()
        os.write(ready_w, b"r")
        while os.read(release_r, 1):  # stay alive until released (end of file)
            pass

    def scrape_ns(self) -> float:
        start = time.perf_counter_ns()
        self._render()
        return time.perf_counter_ns() - start

    def recycle(self, first: int, count: int) -> None:
        """Fork ``count`` short-lived workers one after another (from the master)."""
        os.write(self._cmd_w, struct.pack("=II", first, count))
        if _read_exact(self._reply_r, 1, "the master") != b"k":
            raise RuntimeError("a recycled worker failed")

    def files(self) -> int:
        return sum(name.endswith(self._suffixes) for name in os.listdir(self.directory))

    def check(self) -> tuple[int, float, float, float]:
        return counter_totals(self._render())

    def stop(self) -> None:
        """Release the live workers and the master, and reap them."""
        _close(*self._fds)
        self._fds = []
        for pid in self._pids:
            os.waitpid(pid, 0)
        self._pids = []

    def kill(self) -> None:
        """On error: end every child left, now."""
        _close(*self._fds)
        for pid in self._pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        self._pids = []


def pc_side(directory: str) -> int:
    """``--pc-side DIR``: prometheus-client's side, one JSON command per line on stdin."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != directory:
        raise SystemExit("--pc-side needs PROMETHEUS_MULTIPROC_DIR set to DIR before start")
    created_disabled = _disable_created()
    counter = RawCounter(NAME, HELP, ["route", "code"])
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    side = Side(directory, counter.labels, lambda: generate_latest(registry), (".db",))
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            answer: Any
            if op == "setup":
                answer = {"seconds": side.setup(), "created_disabled": created_disabled}
            elif op == "start_workers":
                answer = side.start_workers()
            elif op == "scrape":
                answer = side.scrape_ns()
            elif op == "recycle":
                side.recycle(command["first"], command["count"])
                answer = None
            elif op == "files":
                answer = side.files()
            elif op == "check":
                answer = side.check()
            elif op == "stop":
                side.stop()
                answer = None
            else:
                raise ValueError(f"unknown command {op!r}")
            print(json.dumps({"answer": answer}), flush=True)
    finally:
        side.kill()
    return 0


class RemoteSide:
    """prometheus-client's Side, in the ``--pc-side`` subprocess."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--pc-side", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,  # its workers are in its process group, to kill at once
        )
        self._stopped = False

    def _call(self, op: str, **arguments: Any) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        stdin.flush()
        if not select.select([stdout], [], [], TIMEOUT)[0]:
            raise TimeoutError(f"no answer from the prometheus-client side to {op!r}")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the prometheus-client side ended during {op!r}")
        return json.loads(line)["answer"]

    def setup(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("setup")
        return answer

    def start_workers(self) -> float:
        return float(self._call("start_workers"))

    def scrape_ns(self) -> float:
        return float(self._call("scrape"))

    def recycle(self, first: int, count: int) -> None:
        self._call("recycle", first=first, count=count)

    def files(self) -> int:
        return int(self._call("files"))

    def check(self) -> tuple[int, float, float, float]:
        count, total, low, high = self._call("check")
        return int(count), float(total), float(low), float(high)

    def stop(self) -> None:
        self._call("stop")
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(TIMEOUT)
        self._stopped = self._process.returncode == 0

    def kill(self) -> None:
        """On error: end it and its workers (its process group), unless it stopped cleanly."""
        if not self._stopped:
            with contextlib.suppress(OSError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# -- measuring -----------------------------------------------------------------------------


def _median_ms(samples_ns: Sequence[float]) -> float:
    return round(statistics.median(samples_ns) / 1e6, 2)


def _row(
    case: str,
    unit: str,
    ours: Sequence[float],
    other: Sequence[float],
    other_name: str,
    *,
    target_ms: float | None = None,
    target_ratio: float | None = None,
) -> dict[str, Any]:
    """A timed pair: medians (ms for scrapes, ns for recordings), the median per-round
    ratio ours/other, and whether the targets were met."""
    scale = 1e6 if unit == "ms" else 1.0
    ours_median = statistics.median(ours) / scale
    ratio = statistics.median(o / t for o, t in zip(ours, other, strict=True))
    met: list[bool] = []
    if target_ms is not None:
        met.append(ours_median <= target_ms)
    if target_ratio is not None:
        met.append(ratio <= target_ratio)
    return {
        "kind": "timing",
        "case": case,
        "unit": unit,
        "ours": round(ours_median, 2),
        "other": round(statistics.median(other) / scale, 2),
        "other_name": other_name,
        "ratio": round(ratio, 3),
        "rounds": len(ours),
        "target_ms": target_ms,
        "target_ratio": target_ratio,
        "meets_target": all(met) if met else None,
    }


def _figure(case: str, ours: Any, other: Any = None, note: str = "") -> dict[str, Any]:
    return {"kind": "figure", "case": case, "ours": ours, "prometheus_client": other, "note": note}


def _interleaved(
    sides: Sequence[Callable[[], float]], rounds: int
) -> tuple[list[float], list[float]]:
    """Each of two timings once per round, the order flipping every round."""
    samples: list[list[float]] = [[], []]
    for round_index in range(rounds):
        order = [1, 0] if round_index % 2 else [0, 1]
        for index in order:
            samples[index].append(sides[index]())
    return samples[0], samples[1]


def measure_single(rounds: int) -> list[dict[str, Any]]:
    """(1) One process, no multi-process directory, both libraries in this process."""
    results = []
    registry = CollectorRegistry()
    raw_counter = RawCounter(NAME, HELP, ["route", "code"], registry=registry)
    facade = _facade()
    counter = facade.counter(f"{NAME}_total", HELP, ["route", "code"])
    for label_values in LABELS:
        raw_counter.labels(*label_values).inc()
        counter.labels(*label_values).inc()
    ours = _renderer(facade)
    raw_ns, ours_ns = interleaved_ns(
        [timeit.Timer(lambda: generate_latest(registry)), timeit.Timer(ours)], rounds, 1
    )
    results.append(
        _row(
            "scrape, 1 process, 10,000 counter series",
            "ms",
            ours_ns,
            raw_ns,
            "prometheus-client",
            target_ms=SINGLE_MS,
            target_ratio=SINGLE_RATIO,
        )
    )
    same = _family_lines(ours(), NAME) == _family_lines(generate_latest(registry), NAME)
    facade.close()

    hregistry = CollectorRegistry()
    raw_histogram = RawHistogram(
        "bench_latency_seconds", HELP, ["route"], buckets=BUCKETS, registry=hregistry
    )
    hfacade = _facade()
    histogram = hfacade.histogram("bench_latency_seconds", HELP, ["route"], buckets=BUCKETS)
    for route in range(ROUTES):
        raw_histogram.labels(f"/api/v1/route{route}").observe(0.03)
        histogram.labels(f"/api/v1/route{route}").observe(0.03)
    hours = _renderer(hfacade)
    raw_ns, ours_ns = interleaved_ns(
        [timeit.Timer(lambda: generate_latest(hregistry)), timeit.Timer(hours)], rounds, 1
    )
    results.append(
        _row(
            f"scrape, 1 process, 1,000 histogram series ({len(BUCKETS)} buckets)",
            "ms",
            ours_ns,
            raw_ns,
            "prometheus-client",
        )
    )
    hsame = _family_lines(hours(), "bench_latency_seconds") == _family_lines(
        generate_latest(hregistry), "bench_latency_seconds"
    )
    hfacade.close()
    results.append(
        _figure(
            "1 process: same lines for the family (counter, histogram)",
            [same, hsame],
            note="ours against generate_latest on the same series",
        )
    )
    return results


def measure_record(rounds: int, number: int, directory: str) -> list[dict[str, Any]]:
    """(4) ns per bound recording, a facade with multiprocess_dir against one without."""
    single, shared = _facade(), _facade(directory)
    namespace: dict[str, Any] = {}
    for prefix, facade in (("single", single), ("shared", shared)):
        counter = facade.counter(f"{NAME}_total", HELP, ["route", "code"])
        histogram = facade.histogram("bench_latency_seconds", HELP, ["route"], buckets=BUCKETS)
        namespace[f"{prefix}_child"] = counter.labels(*LABELS[0])
        namespace[f"{prefix}_hchild"] = histogram.labels(LABELS[0][0])
    results = []
    for case, statement, target in (
        ("record, bound counter child.inc()", "{}_child.inc()", RECORD_RATIO),
        ("record, bound histogram child.observe()", "{}_hchild.observe(0.03)", None),
    ):
        timers = [
            timeit.Timer(statement.format(prefix), globals=namespace)
            for prefix in ("single", "shared")
        ]
        single_ns, shared_ns = interleaved_ns(timers, rounds, number)
        results.append(
            _row(case, "ns", shared_ns, single_ns, "single-process facade", target_ratio=target)
        )
    single.close()
    shared.close()
    return results


def measure_multi(rounds: int, ours_dir: str, pc: RemoteSide) -> list[dict[str, Any]]:
    """(2) and (3): 16 live workers, then 1,000 recycled ones, both libraries."""
    facade = _facade(ours_dir)
    counter = facade.counter(f"{NAME}_total", HELP, ["route", "code"])
    ours = Side(ours_dir, counter.labels, _renderer(facade), (".mfw", ".mfa"))
    results: list[dict[str, Any]] = []
    try:
        ours_bind = ours.setup()
        pc_setup = pc.setup()
        results.append(
            _figure(
                "parent binds 10,000 series (s)",
                round(ours_bind, 2),
                round(pc_setup["seconds"], 2),
            )
        )
        if not pc_setup["created_disabled"]:
            results.append(_figure("prometheus-client: _created not disabled", True))
        gc.collect()
        ours_start = ours.start_workers()
        pc_start = pc.start_workers()
        results.append(
            _figure(
                f"{WORKERS} live workers forked and recorded 10,000 series each (s)",
                round(ours_start, 2),
                round(pc_start, 2),
            )
        )
        results.append(_figure("files before scraping", ours.files(), pc.files(), note=FILES))
        ours_ns, pc_ns = _interleaved([ours.scrape_ns, pc.scrape_ns], rounds)
        results.append(
            _row(
                f"scrape, {WORKERS} workers x 10,000 counter series",
                "ms",
                ours_ns,
                pc_ns,
                "prometheus-client",
                target_ms=MULTI_MS,
                target_ratio=MULTI_RATIO,
            )
        )
        expected = WORKERS * SERIES
        results.append(_check(f"{WORKERS} workers: merged counter", ours, pc, expected))

        ours_scrapes: list[float] = []
        ours_recycling = pc_recycling = 0.0
        for batch, first in enumerate(range(0, RECYCLED, SCRAPE_EVERY)):
            count = min(SCRAPE_EVERY, RECYCLED - first)
            for which in [1, 0] if batch % 2 else [0, 1]:
                start = time.perf_counter()
                if which == 0:
                    ours.recycle(first, count)
                    ours_recycling += time.perf_counter() - start
                    ours_scrapes.append(ours.scrape_ns())
                else:
                    pc.recycle(first, count)
                    pc_recycling += time.perf_counter() - start
        results.append(
            _figure(
                f"{RECYCLED:,} workers recycled one after another (s)",
                round(ours_recycling, 2),
                round(pc_recycling, 2),
                note="forked from a master holding no series; scrapes not included",
            )
        )
        results.append(
            _figure(
                f"scrapes every {SCRAPE_EVERY} recycles, compacting (ms: median, max)",
                [_median_ms(ours_scrapes), round(max(ours_scrapes) / 1e6, 2)],
                note="ours only",
            )
        )
        results.append(_figure("files after recycling", ours.files(), pc.files(), note=FILES))
        ours_ns, pc_ns = _interleaved([ours.scrape_ns, pc.scrape_ns], rounds)
        results.append(
            _row(
                f"scrape after {RECYCLED:,} recycled workers",
                "ms",
                ours_ns,
                pc_ns,
                "prometheus-client",
                target_ms=MULTI_MS,
            )
        )
        expected += RECYCLED * PER_RECYCLED
        results.append(_check("after recycling: merged counter", ours, pc, expected))
        results.append(_figure("files after the last scrape", ours.files(), pc.files(), note=FILES))
        ours.stop()
        pc.stop()
    finally:
        ours.kill()
        facade.close()
    return results


def _check(case: str, ours: Side, pc: RemoteSide, expected: int) -> dict[str, Any]:
    """Whether each side's merged counter holds exactly what the workers recorded: 10,000
    series, each the same, adding up to ``expected``."""
    per_series = expected / SERIES
    row = _figure(case, None, None, note=f"expected: {SERIES:,} series, total {expected:,}")
    for key, side in (("ours", ours), ("prometheus_client", pc)):
        count, total, low, high = side.check()
        row[key] = {
            "series": count,
            "total": total,
            "exact": count == SERIES and total == expected and low == high == per_series,
        }
    return row


def measure(rounds: int, number: int) -> list[dict[str, Any]]:
    root = tempfile.mkdtemp(prefix="mf-bench-multiprocess-")
    started = time.perf_counter()
    pc: RemoteSide | None = None
    try:
        directories = {name: os.path.join(root, name) for name in ("ours", "pc", "record")}
        for directory in directories.values():
            os.mkdir(directory)
        pc = RemoteSide(directories["pc"])  # imports meanwhile
        created_disabled = _disable_created()
        results = measure_single(rounds)
        if not created_disabled:
            results.append(_figure("1 process: prometheus-client _created not disabled", True))
        results += measure_record(rounds, number, directories["record"])
        gc.collect()
        results += measure_multi(rounds, directories["ours"], pc)
    finally:
        if pc is not None:
            pc.kill()
        shutil.rmtree(root, ignore_errors=True)
    results.append(_figure("whole run (s)", round(time.perf_counter() - started, 1)))
    return results


# -- printing ------------------------------------------------------------------------------


def _target_text(row: dict[str, Any]) -> str:
    parts = []
    if row["target_ms"] is not None:
        parts.append(f"<= {row['target_ms']:g} ms")
    if row["target_ratio"] is not None:
        parts.append(f"<= {row['target_ratio']:g}x")
    return ", ".join(parts) or "-"


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        mark = "exact" if value["exact"] else "WRONG"
        return f"{value['total']:,.0f} in {value['series']:,} ({mark})"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "-" if value is None else str(value)


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'case':62} {'ours':>9} {'other':>9} {'ratio':>7}  {'target':18} result  (other)")
    met = missed = 0
    missed_cases = []
    for row in results:
        if row["kind"] != "timing":
            continue
        result = "-"
        if row["meets_target"] is not None:
            result = "met" if row["meets_target"] else "MISSED"
            met += row["meets_target"]
            missed += not row["meets_target"]
            if not row["meets_target"]:
                missed_cases.append(row["case"])
        case = f"{row['case']} ({row['unit']})"
        print(
            f"{case:62} {row['ours']:9,.1f} {row['other']:9,.1f} {row['ratio']:7.3f}  "
            f"{_target_text(row):18} {result:7} ({row['other_name']})"
        )
    print()
    print(f"{'figure':64} {'ours':>28} {'prometheus-client':>28}")
    for row in results:
        if row["kind"] == "figure":
            note = f"  [{row['note']}]" if row["note"] else ""
            print(
                f"{row['case']:64} {_value_text(row['ours']):>28} "
                f"{_value_text(row['prometheus_client']):>28}{note}"
            )
    checks = [row for row in results if row["kind"] == "figure" and isinstance(row["ours"], dict)]
    exact = all(row[key]["exact"] for row in checks for key in ("ours", "prometheus_client"))
    print(
        f"prometheus-client {version('prometheus-client')}, Python {sys.version.split()[0]}; "
        "ratio = ours / other, median of per-round ratios"
    )
    summary = f"targets: {met} met, {missed} missed"
    if missed_cases:
        summary += " (" + "; ".join(missed_cases) + ")"
    summary += "; merged totals " + ("exact" if checks and exact else "NOT exact")
    print(summary)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--pc-side"] and len(argv) == 2:
        return pc_side(argv[1])
    return run(__doc__.splitlines()[0], measure, print_table, rounds=5, number=100_000, argv=argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
