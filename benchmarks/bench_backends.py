"""ns per operation of each push backend and the fan-out, next to the raw clients, one run.

    python benchmarks/bench_backends.py [--rounds N] [--number N] [--json FILE]

Every client sends to a local UDP socket that nobody reads (the kernel drops what overflows:
sending is what is measured). Rows are measured in alternating order over several rounds;
the table shows medians. "Amortized" includes the flusher thread's sends, which run on the
other core; the facade's figure is the caller's cost per recording.
"""

from __future__ import annotations

import socket
import statistics
import sys
import timeit
from typing import Any

import statsd
from datadog.dogstatsd.base import DogStatsd
from harness import interleaved_ns, run

import metricsfacade as mf

TAGS = ["method:ping", "transport:stdio", "status:ok"]


def _setup(port: int) -> dict[str, Any]:
    raw_statsd = statsd.StatsClient("127.0.0.1", port)
    pipeline = raw_statsd.pipeline()
    dog_unbuffered = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
    dog_buffered = DogStatsd(
        host="127.0.0.1", port=port, disable_buffering=False, disable_telemetry=True
    )
    facades = {}
    children = {}
    for name, backends in [
        ("statsd", ["statsd"]),
        ("datadog", ["datadog"]),
        ("prometheus", ["prometheus"]),
        ("all", ["prometheus", "statsd", "datadog"]),
    ]:
        facade = mf.Metrics(
            {
                "port": None,
                "backends": backends,
                "statsd": {"port": port},
                "datadog": {"host": "127.0.0.1", "port": port},
            },
            environ={},
        )
        counter = facade.counter("bench_requests_total", "h", ["method", "transport", "status"])
        facades[name] = facade
        children[name] = counter.labels("ping", "stdio", "ok")
    return {
        "raw_statsd": raw_statsd,
        "pipeline": pipeline,
        "dog_unbuffered": dog_unbuffered,
        "dog_buffered": dog_buffered,
        "TAGS": TAGS,
        "children": children,
        "facades": facades,
        "statsd_child": children["statsd"],
        "datadog_child": children["datadog"],
        "prometheus_child": children["prometheus"],
        "all_child": children["all"],
    }


#: (row, statement, setup statement run once per timing, target ns or None)
ROWS = [
    ("statsd incr(), one datagram per call", 'raw_statsd.incr("bench.requests")', None),
    (
        "statsd incr() in a 50-op pipeline",
        'pipeline.incr("bench.requests")\nif len(pipeline._stats) >= 50: pipeline.send()',
        None,
    ),
    (
        "DogStatsd increment, 3 tags, unbuffered",
        'dog_unbuffered.increment("bench.requests", tags=TAGS)',
        None,
    ),
    (
        "DogStatsd increment, 3 tags, buffered",
        'dog_buffered.increment("bench.requests", tags=TAGS)',
        None,
    ),
    ("facade -> statsd backend, bound child", "statsd_child.inc()", 1000),
    ("facade -> datadog backend, bound child", "datadog_child.inc()", 1000),
    ("facade -> prometheus backend, bound child", "prometheus_child.inc()", None),
    ("facade -> all three backends, bound child", "all_child.inc()", 2500),
]


def measure(rounds: int, number: int) -> list[dict[str, Any]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    namespace = _setup(receiver.getsockname()[1])
    timers = [timeit.Timer(stmt, globals=namespace) for _, stmt, _ in ROWS]
    samples = interleaved_ns(timers, rounds, number)
    for facade in namespace["facades"].values():
        facade.close()
    receiver.close()
    results = []
    for (row, _, target), values in zip(ROWS, samples, strict=True):
        median = statistics.median(values)
        results.append(
            {
                "operation": row,
                "ns_per_op": round(median, 1),
                "target_ns": target,
                "meets_target": None if target is None else median <= target,
            }
        )
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'operation (counter increment)':45} {'ns/op':>8}  target")
    for row in results:
        target = (
            "-"
            if row["target_ns"] is None
            else (f"<= {row['target_ns']} {'ok' if row['meets_target'] else 'MISSED'}")
        )
        print(f"{row['operation']:45} {row['ns_per_op']:8.0f}  {target}")


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], measure, print_table, rounds=7, number=50_000))
