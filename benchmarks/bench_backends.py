"""Push backends under a sustained load, next to the raw clients: time, CPU and what arrives.

    python benchmarks/bench_backends.py [--rounds N] [--number N] [--json FILE]

Every row runs in a fresh process: a tight loop of ``--number`` operations (on 1 or 4
threads), then the client's final flush and close. The table shows, per operation:

- caller: the wall time of the loop divided by the operations (what the application pays);
- CPU: the whole process's CPU time (every thread, the final flush included) divided by
  the operations, so work moved to a background thread is still counted;
- lines: the lines the receiver got; lost: the operations the receiver did not get (counter
  increments summed from the lines, histogram observations weighed by ``1/rate``).

The receiver is a UDP socket with a large buffer, read by a thread of this process. Rows are
run in alternating order over the rounds; the table shows medians, and ratios are taken
between rows of the same run.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from harness import run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import strict_statsd  # noqa: E402  (the tests' strict parser reads what arrives)

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

DOG_AGGREGATED = (
    "from datadog.dogstatsd.base import DogStatsd\n"
    "dog = DogStatsd(host='127.0.0.1', port=PORT, disable_buffering=False,"
    " disable_aggregation=False, disable_telemetry=True)\n"
)
DOG_CLOSE = "dog.flush_aggregated_metrics(); dog.flush(); dog.close_socket()"

#: row -> (setup, one operation, close, kind of operation, threads). ``PORT`` is the
#: receiver's port; every row names its metric "bench.<something>".
ROWS: dict[str, tuple[str, str, str, str, int]] = {
    "statsd pipeline, 50 ops a send (no tags)": (
        "import statsd\n"
        "pipe = statsd.StatsClient('127.0.0.1', PORT).pipeline()\n"
        "count = [0]\n"
        "def op():\n"
        "    pipe.incr('bench.requests')\n"
        "    count[0] += 1\n"
        "    if count[0] % 50 == 0: pipe.send()\n",
        "op()",
        "pipe.send()",
        "counter",
        1,
    ),
    "DogStatsd buffered": (
        "from datadog.dogstatsd.base import DogStatsd\n"
        "dog = DogStatsd(host='127.0.0.1', port=PORT, disable_buffering=False,"
        " disable_telemetry=True)\n",
        "dog.increment('bench.requests', tags=TAGS)",
        "dog.flush(); dog.close_socket()",
        "counter",
        1,
    ),
    "DogStatsd buffered + aggregated": (
        DOG_AGGREGATED,
        "dog.increment('bench.requests', tags=TAGS)",
        DOG_CLOSE,
        "counter",
        1,
    ),
    "facade: prometheus (no push)": (
        "m = facade(['prometheus'])\nchild = counter(m)\n",
        "child.inc()",
        "m.close()",
        "none",
        1,
    ),
    "facade: statsd": (
        "m = facade(['statsd'])\nchild = counter(m)\n",
        "child.inc()",
        "m.close()",
        "counter",
        1,
    ),
    "facade: datadog": (
        "m = facade(['datadog'])\nchild = counter(m)\n",
        "child.inc()",
        "m.close()",
        "counter",
        1,
    ),
    "facade: prometheus + statsd + datadog": (
        "m = facade(['prometheus', 'statsd', 'datadog'])\nchild = counter(m)\n",
        "child.inc()",
        "m.close()",
        "counter2",
        1,
    ),
    "DogStatsd buffered + aggregated, 4 threads": (
        DOG_AGGREGATED,
        "dog.increment('bench.requests', tags=TAGS)",
        DOG_CLOSE,
        "counter",
        4,
    ),
    "facade: statsd, 4 threads": (
        "m = facade(['statsd'])\nchild = counter(m)\n",
        "child.inc()",
        "m.close()",
        "counter",
        4,
    ),
    "histogram: DogStatsd buffered + aggregated": (
        "from datadog.dogstatsd.base import DogStatsd\n"
        "dog = DogStatsd(host='127.0.0.1', port=PORT, disable_buffering=False,"
        " disable_aggregation=False, max_metric_samples_per_context=1000,"
        " disable_telemetry=True)\n",
        "dog.histogram('bench.size', 42.0, tags=TAGS)",
        DOG_CLOSE,
        "histogram",
        1,
    ),
    "histogram: facade datadog": (
        "m = facade(['datadog'])\n"
        "child = m.histogram('bench_size', 'h', ['method', 'transport', 'status'])"
        ".labels('ping', 'stdio', 'ok')\n",
        "child.observe(42.0)",
        "m.close()",
        "histogram",
        1,
    ),
}

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    PORT, NUMBER, THREADS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    TAGS = ["method:ping", "transport:stdio", "status:ok"]

    def facade(backends):
        import metricsfacade as mf
        return mf.Metrics(
            {"port": None, "backends": backends,
             "statsd": {"port": PORT}, "datadog": {"host": "127.0.0.1", "port": PORT}},
            environ={},
        )

    def counter(m):
        names = ["method", "transport", "status"]
        return m.counter("bench_requests_total", "h", names).labels("ping", "stdio", "ok")

    SETUP
    def loop(count):
        for _ in range(count):
            OP

    loop(1000)  # warm-up, counted at the receiver too
    per_thread = NUMBER // THREADS
    cpu = time.process_time()
    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(per_thread,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    caller = time.perf_counter() - started
    CLOSE
    cpu = time.process_time() - cpu
    print(json.dumps({"caller": caller, "cpu": cpu, "ops": per_thread * THREADS + 1000}))
    """
)


class Receiver:
    """Counts what arrives: lines, counter increments, histogram observations (by rate)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        except OSError:  # not root: the largest buffer the system allows
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.lines = 0
        self.malformed = 0
        self.counted: dict[str, float] = {}
        self._last = time.monotonic()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def reset(self) -> None:
        self.lines = 0
        self.malformed = 0
        self.counted = {}

    def quiet_for(self, secs: float) -> None:
        while time.monotonic() - self._last < secs:
            time.sleep(0.05)

    def _read(self) -> None:
        while not self._stop:
            try:
                datagram = self.sock.recv(65_536)
            except TimeoutError:
                continue
            self._last = time.monotonic()
            try:  # DogStatsd ends its packets with a newline
                lines = strict_statsd.parse_datagram(datagram.rstrip(b"\n"))
            except strict_statsd.MalformedLine:
                self.malformed += 1
                continue
            for line in lines:
                if not line.name.startswith("bench."):
                    continue
                self.lines += 1
                weight = 1 / line.rate if line.rate else 1.0
                if line.type == "c":
                    amount = sum(line.all_values) * weight
                else:
                    amount = len(line.all_values) * weight
                self.counted[line.type] = self.counted.get(line.type, 0.0) + amount

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def run_row(row: str, receiver: Receiver, number: int) -> dict[str, float]:
    setup, op, close, kind, threads = ROWS[row]
    script = CHILD.replace("SETUP", setup.rstrip()).replace("OP", op).replace("CLOSE", close)
    receiver.quiet_for(0.3)
    receiver.reset()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(receiver.port), str(number), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    figures = json.loads(result.stdout)
    receiver.quiet_for(0.5)
    ops = figures["ops"]
    expected = {"counter": ops, "counter2": 2 * ops, "histogram": ops, "none": 0}[kind]
    arrived = sum(receiver.counted.values())
    return {
        "caller_ns": figures["caller"] / (ops - 1000) * 1e9,
        "cpu_ns": figures["cpu"] / (ops - 1000) * 1e9,
        "lines": receiver.lines,
        "lost": round(expected - arrived, 6) + 0.0,  # + 0.0: never print -0
        "malformed": receiver.malformed,
    }


def measure(rounds: int, number: int) -> list[dict[str, Any]]:
    receiver = Receiver()
    samples: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    try:
        for round_index in range(rounds):
            order = list(ROWS)
            if round_index % 2:
                order.reverse()
            for row in order:
                samples[row].append(run_row(row, receiver, number))
    finally:
        receiver.close()
    results = []
    for row, runs in samples.items():
        results.append(
            {
                "operation": row,
                "threads": ROWS[row][4],
                "caller_ns": round(statistics.median(r["caller_ns"] for r in runs), 1),
                "cpu_ns": round(statistics.median(r["cpu_ns"] for r in runs), 1),
                "lines": int(statistics.median(r["lines"] for r in runs)),
                "lost_max": max(r["lost"] for r in runs),
                "malformed_datagrams": max(r["malformed"] for r in runs),
                "rounds": runs,
            }
        )
    return results


def targets(results: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(target, measured ratio, limit): the median over rounds of each round's ratio, so
    two rows are compared under the same load."""
    rounds = {row["operation"]: row["rounds"] for row in results}

    def ratio(row: str, figure: str, reference: str, reference_figure: str) -> float:
        pairs = zip(rounds[row], rounds[reference], strict=True)
        return statistics.median(a[figure] / b[reference_figure] for a, b in pairs)

    prometheus = "facade: prometheus (no push)"
    aggregated = "DogStatsd buffered + aggregated"
    fan_out = "facade: prometheus + statsd + datadog"
    histogram = "histogram: DogStatsd buffered + aggregated"
    return [
        (
            "statsd caller / prometheus caller",
            ratio("facade: statsd", "caller_ns", prometheus, "caller_ns"),
            1.1,
        ),
        (
            "statsd CPU / DogStatsd aggregated CPU",
            ratio("facade: statsd", "cpu_ns", aggregated, "cpu_ns"),
            0.5,
        ),
        (
            "datadog CPU / DogStatsd aggregated CPU",
            ratio("facade: datadog", "cpu_ns", aggregated, "cpu_ns"),
            0.5,
        ),
        (
            "fan-out caller / statsd caller",
            ratio(fan_out, "caller_ns", "facade: statsd", "caller_ns"),
            1.2,
        ),
        ("fan-out CPU / statsd CPU", ratio(fan_out, "cpu_ns", "facade: statsd", "cpu_ns"), 1.2),
        (
            "histogram CPU / DogStatsd aggregated histogram CPU",
            ratio("histogram: facade datadog", "cpu_ns", histogram, "cpu_ns"),
            0.5,
        ),
    ]


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'operation':46} {'caller ns':>10} {'CPU ns':>8} {'lines':>8} {'lost':>8}")
    for row in results:
        print(
            f"{row['operation']:46} {row['caller_ns']:10.0f} {row['cpu_ns']:8.0f} "
            f"{row['lines']:8d} {row['lost_max']:8.0f}"
        )
    print()
    for name, ratio, limit in targets(results):
        verdict = "ok" if ratio <= limit else "MISSED"
        print(f"{name:52} {ratio:6.2f}  (target <= {limit}) {verdict}")


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], measure, print_table, rounds=3, number=300_000))
