"""ns per call of the Shadowcat helpers (Prometheus backend), measured in one run.

    python benchmarks/bench_helpers.py [--rounds N] [--number N] [--json FILE]

A "request" is what proxy code does per MCP request: track_request with an upstream, one
request size, an upstream wait, one response size. Prints medians over rounds.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from typing import Any

from harness import interleaved_ns, run

import metricsfacade as mf
from metricsfacade.shadowcat import ShadowcatMetrics

REQUEST = """
with sc.track_request("tools/call", "stdio", upstream="local") as req:
    req.request_size(512)
    with req.upstream_wait():
        pass
    req.response_size(2048)
"""
START_FINISH = """
tracker = sc.start_request("tools/call", "stdio", upstream="local")
tracker.upstream_started()
tracker.upstream_finished()
tracker.finish(response_size=2048)
"""

ROWS = [
    ("track_request (with upstream wait, 2 sizes)", REQUEST),
    ("start_request ... finish()", START_FINISH),
    ("session() enter and exit", "with sc.session(): pass"),
    ("circuit_breaker_state()", 'sc.circuit_breaker_state("local", "open")'),
    ("rate_limit_exceeded()", 'sc.rate_limit_exceeded("per_client", "client-7")'),
    ("upstream_error()", 'sc.upstream_error("local", "timeout")'),
    ("tape_size()", 'sc.tape_size("stdio", 4096)'),
    ("tape_operation()", 'sc.tape_operation("record")'),
    ("for scale: one bound counter inc()", "child.inc()"),
]


def measure(rounds: int, number: int) -> list[dict[str, Any]]:
    facade = mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={})
    sc = ShadowcatMetrics(facade)
    namespace = {"sc": sc, "child": sc.requests.labels("ping", "stdio", "ok")}
    timers = [timeit.Timer(stmt, globals=namespace) for _, stmt in ROWS]
    samples = interleaved_ns(timers, rounds, number)
    facade.close()
    return [
        {"helper": row, "ns_per_call": round(statistics.median(values), 1)}
        for (row, _), values in zip(ROWS, samples, strict=True)
    ]


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'helper (Prometheus backend)':46} {'ns/call':>8}")
    for row in results:
        print(f"{row['helper']:46} {row['ns_per_call']:8.0f}")


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], measure, print_table, rounds=5, number=20_000))
