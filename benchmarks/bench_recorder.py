"""ns per operation of the facade next to raw prometheus-client, measured in one run.

    python benchmarks/bench_recorder.py [--rounds N] [--number N] [--json FILE]

Each pair (raw, facade) is timed in alternating order over several rounds; the table shows
medians, and ratios are medians of the per-round ratios, so machine noise that hits one round
hits both sides of it. Prints figures only: it is not a pass/fail test.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from importlib.metadata import version
from typing import Any

from harness import interleaved_ns, run
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as RawCounter
from prometheus_client import Histogram as RawHistogram

import metricsfacade as mf

BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


def _setup() -> dict[str, Any]:
    registry = CollectorRegistry()
    raw_counter = RawCounter(
        "raw_requests", "h", ["method", "transport", "status"], registry=registry
    )
    raw_histogram = RawHistogram(
        "raw_latency_seconds", "h", ["method"], buckets=BUCKETS, registry=registry
    )
    facade = mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={})
    counter = facade.counter("f_requests_total", "h", ["method", "transport", "status"])
    histogram = facade.histogram("f_latency_seconds", "h", ["method"], buckets=BUCKETS)
    timer = facade.timer("f_timer_seconds", "h", ["method"], buckets=BUCKETS)
    disabled = mf.Metrics({"enabled": False}, environ={})
    return {
        "raw_counter": raw_counter,
        "raw_child": raw_counter.labels("ping", "stdio", "ok"),
        "raw_histogram": raw_histogram,
        "raw_hchild": raw_histogram.labels("ping"),
        "counter": counter,
        "child": counter.labels("ping", "stdio", "ok"),
        "histogram": histogram,
        "hchild": histogram.labels("ping"),
        "tchild": timer.labels("ping"),
        "off_child": disabled.counter("off_total", "h", ["m"]).labels("x"),
        "empty": lambda: None,
    }


#: (case, raw statement, facade statement, target ratio facade/raw or None)
CASES = [
    ("counter, bound child", "raw_child.inc()", "child.inc()", 1.15),
    (
        "counter, labels() every call",
        'raw_counter.labels("ping", "stdio", "ok").inc()',
        'counter.labels("ping", "stdio", "ok").inc()',
        0.5,
    ),
    (
        "counter, keyword labels every call",
        'raw_counter.labels(method="ping", transport="stdio", status="ok").inc()',
        'counter.labels(method="ping", transport="stdio", status="ok").inc()',
        0.5,
    ),
    ("histogram, bound observe", "raw_hchild.observe(0.03)", "hchild.observe(0.03)", 1.15),
    (
        "histogram, labels() every call",
        'raw_histogram.labels("ping").observe(0.03)',
        'histogram.labels("ping").observe(0.03)',
        0.5,
    ),
    ("timer, with child.time()", "with raw_hchild.time(): pass", "with tchild.time(): pass", 1.15),
    ("disabled facade vs empty call", "empty()", "off_child.inc()", None),
]


def measure(rounds: int, number: int) -> list[dict[str, Any]]:
    namespace = _setup()
    results = []
    for case, raw_stmt, facade_stmt, target in CASES:
        timers = [timeit.Timer(stmt, globals=namespace) for stmt in (raw_stmt, facade_stmt)]
        raw_ns, facade_ns = interleaved_ns(timers, rounds, number)
        ratio = statistics.median(f / r for f, r in zip(facade_ns, raw_ns, strict=True))
        results.append(
            {
                "case": case,
                "raw_ns": round(statistics.median(raw_ns), 1),
                "facade_ns": round(statistics.median(facade_ns), 1),
                "ratio": round(ratio, 3),
                "target_ratio": target,
                "meets_target": None if target is None else ratio <= target,
            }
        )
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'operation':38} {'raw ns':>8} {'facade ns':>10} {'ratio':>7}  target")
    for row in results:
        target = (
            "-"
            if row["target_ratio"] is None
            else (f"<= {row['target_ratio']:.2f} {'ok' if row['meets_target'] else 'MISSED'}")
        )
        print(
            f"{row['case']:38} {row['raw_ns']:8.0f} {row['facade_ns']:10.0f} "
            f"{row['ratio']:7.2f}  {target}"
        )
    print(
        f"raw = prometheus-client {version('prometheus-client')}, Python {sys.version.split()[0]}"
        "; the 'disabled' row compares with an empty function call"
    )


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], measure, print_table, rounds=9, number=100_000))
