"""Load test: concurrent clients through one ``metricsfacade proxy``, checked against /metrics.

    python -m metricsfacade.demo.load [--clients 8] [--duration 10]

Stdio carries one connection, so "clients" are concurrent requests in flight on it (JSON-RPC
allows any number). When the time is up it reads /metrics and prints the request rate,
latency quantiles and proxy-added latency, then checks that the proxy counted exactly the
requests that were sent (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]


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

    def call(self, method: str, params: dict[str, object]) -> bool:
        request_id = next(self._ids)
        done = self._waiting[request_id] = threading.Event()
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        with self._write_lock:
            self._out.write(line.encode() + b"\n")
            self._out.flush()
        return done.wait(10)


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return float("nan")
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
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
    url = _metrics_url(proxy.stderr)
    connection = Connection(proxy.stdin, proxy.stdout)
    connection.call(
        "initialize",
        {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "load", "version": "1"},
        },
    )
    sent = [0] * args.clients
    deadline = time.monotonic() + args.duration

    def client(index: int) -> None:
        while time.monotonic() < deadline:
            if connection.call("tools/call", {"name": "echo", "arguments": {"text": "load"}}):
                sent[index] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    families = _settled_metrics(url, sum(sent))
    proxy.stdin.close()
    proxy.wait(10)
    return _report(families, sum(sent), elapsed, args.clients)


def _report(families: dict[str, Metric], total_sent: int, elapsed: float, clients: int) -> int:
    counted = sum(
        s.value
        for s in families["shadowcat_requests"].samples
        if s.name.endswith("_total") and s.labels.get("method") == "tools/call"
    )
    duration = _buckets(families["shadowcat_request_duration_seconds"], "tools/call")
    added = _buckets(families["shadowcat_proxy_latency_seconds"], None)
    print(
        f"clients {clients}, {elapsed:.1f} s: {total_sent} requests sent, "
        f"{total_sent / elapsed:.0f}/s"
    )
    for q in (0.5, 0.95, 0.99):
        print(
            f"  request duration p{round(q * 100)}: {histogram_quantile(q, duration) * 1e3:.3f} ms"
            f"   proxy-added p{round(q * 100)}: {histogram_quantile(q, added) * 1e3:.3f} ms"
        )
    verdict = "ok" if counted == total_sent else "MISMATCH"
    print(f"  counted by the proxy: {counted:.0f} tools/call requests ({verdict})")
    return 0 if counted == total_sent else 1


def _settled_metrics(url: str, expected: int, timeout: float = 10.0) -> dict[str, Metric]:
    """/metrics once the proxy's recorder has caught up with the load (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        families = {f.name: f for f in text_string_to_metric_families(_get(url))}
        if _counted(families) >= expected or time.monotonic() > deadline:
            return families
        time.sleep(0.1)


def _counted(families: dict[str, Metric]) -> float:
    return sum(
        sample.value
        for sample in families["shadowcat_requests"].samples
        if sample.name.endswith("_total") and sample.labels.get("method") == "tools/call"
    )


def _buckets(family: Metric, method: str | None) -> list[tuple[float, float]]:
    totals: dict[float, float] = {}
    for sample in family.samples:
        if sample.name.endswith("_bucket") and (
            method is None or sample.labels.get("method") == method
        ):
            bound = float(sample.labels["le"])
            totals[bound] = totals.get(bound, 0.0) + sample.value
    return list(totals.items())


def _metrics_url(stderr: IO[bytes]) -> str:
    for raw in stderr:
        match = re.search(rb"metrics at (http\S+)", raw)
        if match:
            threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
            return match.group(1).decode()
    raise RuntimeError("the proxy did not start its endpoint")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


if __name__ == "__main__":
    sys.exit(main())
