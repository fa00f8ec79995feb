"""Load test: concurrent clients through one ``metricsfacade proxy``, checked against /metrics.

    python -m metricsfacade.demo.load [--clients 8] [--duration 10] [--samples FILE]

Stdio carries one connection, so "clients" are concurrent requests in flight on it (JSON-RPC
allows any number). Each client times its own round trips; when the time is up it prints the
request rate and percentiles of those client-side samples (the proxy's histogram buckets
start at 1 ms, too coarse for sub-millisecond requests), the proxy-added latency from
/metrics, and checks that the proxy counted exactly the requests that were sent (exit 1
otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from metricsfacade.demo.observe import ProxyLog, families, fetch, percentile

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]
QUANTILES = (0.5, 0.95, 0.99)


class Connection:
    """One stdio connection shared by many client threads: responses matched by id."""

    def __init__(self, to_proxy: IO[bytes], from_proxy: IO[bytes]) -> None:
        self._out = to_proxy
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, threading.Event] = {}
        threading.Thread(target=self._read, args=(from_proxy,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            event = self._waiting.pop(json.loads(line).get("id"), None)
            if event is not None:
                event.set()

    def call(self, method: str, params: dict[str, object]) -> float | None:
        """Seconds from sending the request to its response, as this client saw them;
        None when no response came within 10 s."""
        started = time.perf_counter()
        request_id = next(self._ids)
        done = self._waiting[request_id] = threading.Event()
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        with self._write_lock:
            self._out.write(line.encode() + b"\n")
            self._out.flush()
        return time.perf_counter() - started if done.wait(10) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--samples", type=Path, metavar="FILE", help="also write each round trip's seconds"
    )
    args = parser.parse_args(argv)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0", "--", *SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proxy.stdin is not None
    assert proxy.stdout is not None
    assert proxy.stderr is not None
    url = ProxyLog(proxy.stderr).metrics_url(timeout=10)
    if url is None:
        raise RuntimeError("the proxy did not start its endpoint")
    connection = Connection(proxy.stdin, proxy.stdout)
    connection.call(
        "initialize",
        {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "load", "version": "1"},
        },
    )
    started = time.monotonic()
    timings = _drive(connection, args.clients, started + args.duration)
    elapsed = time.monotonic() - started
    exposition = _settled_metrics(url, len(timings))
    proxy.stdin.close()
    proxy.wait(10)
    if args.samples:
        args.samples.write_text("".join(f"{seconds!r}\n" for seconds in timings))
    return _report(exposition, timings, elapsed, args.clients)


def _drive(connection: Connection, clients: int, deadline: float) -> list[float]:
    """Each client's answered round trips until the deadline, all together and sorted."""
    timings: list[list[float]] = [[] for _ in range(clients)]

    def client(index: int) -> None:
        while time.monotonic() < deadline:
            seconds = connection.call("tools/call", {"name": "echo", "arguments": {"text": "load"}})
            if seconds is not None:
                timings[index].append(seconds)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sorted(itertools.chain.from_iterable(timings))


def _report(
    exposition: dict[str, Metric], timings: list[float], elapsed: float, clients: int
) -> int:
    total_sent = len(timings)
    counted = _counted(exposition)
    print(
        f"clients {clients}, {elapsed:.1f} s: {total_sent} requests sent, "
        f"{total_sent / elapsed:.0f}/s"
    )
    print(f"  client-side percentiles: this script timed each of the {total_sent} round trips")
    for q in QUANTILES:
        print(f"    request duration p{round(q * 100)}: {percentile(timings, q) * 1e3:.3f} ms")
    print(f"  {_proxy_added(exposition['shadowcat_proxy_latency_seconds'])}")
    verdict = "ok" if counted == total_sent else "MISMATCH"
    print(f"  counted by the proxy: {counted:.0f} tools/call requests ({verdict})")
    return 0 if counted == total_sent else 1


def _proxy_added(family: Metric) -> str:
    """The proxy-added latency, as far as its histogram can tell: the mean is exact; a
    percentile is only known to lie in a bucket."""
    totals: dict[str, float] = {}
    for sample in family.samples:
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    count = totals.get(f"{family.name}_count", 0.0)
    if not count:
        return "proxy-added latency (from /metrics): no samples"
    mean = totals[f"{family.name}_sum"] / count
    lower, upper = _bucket_of(0.99, _buckets(family), count)
    return (
        f"proxy-added latency (from /metrics): mean {mean * 1e3:.3f} ms; "
        f"p99 between {lower * 1e3:g} and {upper * 1e3:g} ms (a histogram bucket, no finer)"
    )


def _bucket_of(
    quantile: float, buckets: list[tuple[float, float]], count: float
) -> tuple[float, float]:
    """The bucket (lower, upper bound) holding ``quantile``; cumulative counts as exposed."""
    lower = 0.0
    for bound, cumulative in buckets:
        if cumulative >= quantile * count:
            return lower, bound
        lower = bound
    return lower, float("inf")


def _settled_metrics(url: str, expected: int, timeout: float = 10.0) -> dict[str, Metric]:
    """/metrics once the proxy's recorder has caught up with the load (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        exposition = families(fetch(url))
        if _counted(exposition) >= expected or time.monotonic() > deadline:
            return exposition
        time.sleep(0.1)


def _counted(exposition: dict[str, Metric]) -> float:
    return sum(
        sample.value
        for sample in exposition["shadowcat_requests"].samples
        if sample.name.endswith("_total") and sample.labels.get("method") == "tools/call"
    )


def _buckets(family: Metric) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) over all label sets, by bound."""
    totals: dict[float, float] = {}
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            bound = float(sample.labels["le"])
            totals[bound] = totals.get(bound, 0.0) + sample.value
    return sorted(totals.items())


if __name__ == "__main__":
    sys.exit(main())
