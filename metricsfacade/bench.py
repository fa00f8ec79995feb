"""``metricsfacade bench``: what the proxy and its instrumentation cost per request.

Every path runs at once as a long-lived process pair, and rounds interleave them so that
noise on a shared machine hits every path alike:

- ``direct``: the client talks to the bundled MCP server itself;
- ``proxy_disabled``: through ``metricsfacade proxy`` with ``enabled = false``;
- ``proxy_<backend>``: through the proxy recording into prometheus, statsd or datadog (the
  last two to local UDP receivers), and ``proxy_all`` into all three.

Each round starts fresh processes for every path and sends ``requests`` ``tools/call``
requests down each, one at a time and taking turns (request 1 on every path, then request
2...), so every path sees the same moments and the same luck of CPU placement. The proxy's
own overhead is ``proxy_disabled`` against ``direct``; the instrumentation overhead of a
backend is its path against ``proxy_disabled``, in percent: the median, over rounds, of the
ratio of the two paths' median latencies in that round.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]
BACKEND_PATHS = ("prometheus", "statsd", "datadog", "all")
WARMUP_REQUESTS = 30
DEFAULT_TARGET_PERCENT = 5.0


class Peer:
    """One path: a process speaking MCP over pipes, already initialized."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        self._in: IO[bytes] = stdin
        self._out: IO[bytes] = stdout
        self._next_id = 0
        self.call(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "metricsfacade-bench", "version": "1"},
            },
        )
        self._in.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self._in.flush()

    def call(self, method: str, params: dict[str, Any]) -> float:
        """Send one request, wait for its response; the round trip in seconds."""
        self._next_id += 1
        line = (
            json.dumps(
                {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
            ).encode()
            + b"\n"
        )
        started = time.perf_counter()
        self._in.write(line)
        self._in.flush()
        response = self._out.readline()
        elapsed = time.perf_counter() - started
        if not response:
            raise RuntimeError(f"{method}: the peer closed its output")
        return elapsed

    def close(self) -> None:
        self._in.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@attrs.frozen
class PathStats:
    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> PathStats:
        ordered = sorted(samples)

        def pick(quantile: float) -> float:
            return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

        return cls(pick(0.5), pick(0.95), pick(0.99), statistics.fmean(ordered))


def _paths(receiver_port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    proxy = [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0", "--", *SERVER]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("METRICSFACADE_", "DD_"))}
    push = {
        "METRICSFACADE_STATSD__PORT": str(receiver_port),
        "METRICSFACADE_DATADOG__HOST": "127.0.0.1",
        "METRICSFACADE_DATADOG__PORT": str(receiver_port),
    }
    paths = {
        "direct": (SERVER, clean),
        "proxy_disabled": (proxy, {**clean, "METRICSFACADE_ENABLED": "false"}),
    }
    for backend in BACKEND_PATHS:
        backends = "prometheus,statsd,datadog" if backend == "all" else backend
        paths[f"proxy_{backend}"] = (proxy, {**clean, **push, "METRICSFACADE_BACKENDS": backends})
    return paths


def run_bench(requests: int, rounds: int, target_percent: float) -> dict[str, Any]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the agents' stand-in
    receiver.bind(("127.0.0.1", 0))
    paths = _paths(receiver.getsockname()[1])
    samples: dict[str, list[float]] = {name: [] for name in paths}
    round_medians: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for round_index in range(rounds):
            for name, values in _round(paths, requests, round_index).items():
                samples[name].extend(values)
                round_medians[name].append(statistics.median(values))
    finally:
        receiver.close()
    return _report(samples, round_medians, requests, rounds, target_percent)


def _round(
    paths: dict[str, tuple[list[str], dict[str, str]]], requests: int, round_index: int
) -> dict[str, list[float]]:
    """One round on fresh processes (so no path keeps a lucky or unlucky CPU placement),
    the paths taking turns request by request."""
    peers = {name: Peer(command, env) for name, (command, env) in paths.items()}
    params = {"name": "echo", "arguments": {"text": "benchmark"}}
    try:
        for peer in peers.values():  # warm up every path
            for _ in range(WARMUP_REQUESTS):
                peer.call("tools/call", params)
        names = list(peers)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        for request_index in range(requests):
            shift = (round_index + request_index) % len(names)
            for name in names[shift:] + names[:shift]:
                latencies[name].append(peers[name].call("tools/call", params))
        return latencies
    finally:
        for peer in peers.values():
            peer.close()


def _report(
    samples: dict[str, list[float]],
    round_medians: dict[str, list[float]],
    requests: int,
    rounds: int,
    target_percent: float,
) -> dict[str, Any]:
    stats = {name: PathStats.of(values) for name, values in samples.items()}
    base = round_medians["proxy_disabled"]

    def paired_percent(name: str, against: list[float]) -> float:
        return 100 * statistics.median(
            (mine - theirs) / theirs
            for mine, theirs in zip(round_medians[name], against, strict=True)
        )

    proxy_overhead = statistics.median(
        a - b for a, b in zip(base, round_medians["direct"], strict=True)
    )
    backends = {}
    for backend in BACKEND_PATHS:
        name = f"proxy_{backend}"
        percent = paired_percent(name, base)
        backends[backend] = {
            "direct_latency": stats["direct"].p50,
            "proxy_latency": stats[name].p50,
            "overhead": stats[name].p50 - stats["proxy_disabled"].p50,
            "overhead_percent": round(percent, 3),
            "passes_target": percent <= target_percent,
        }
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "target_percent": target_percent,
        "paths": {name: attrs.asdict(value) for name, value in stats.items()},
        "proxy_overhead_p50": proxy_overhead,
        "proxy_overhead_percent": round(
            paired_percent("proxy_disabled", round_medians["direct"]), 3
        ),
        "backends": backends,
        "passes_target": all(entry["passes_target"] for entry in backends.values()),
    }


def print_report(report: dict[str, Any], out: IO[str]) -> None:
    us = 1e6
    print(f"{'path':16} {'p50 µs':>9} {'p95 µs':>9} {'p99 µs':>9} {'mean µs':>9}", file=out)
    for name, row in report["paths"].items():
        print(
            f"{name:16} {row['p50'] * us:9.1f} {row['p95'] * us:9.1f} {row['p99'] * us:9.1f} "
            f"{row['mean'] * us:9.1f}",
            file=out,
        )
    print(
        f"proxy's own overhead (disabled vs direct): {report['proxy_overhead_p50'] * us:.1f} µs "
        f"per request p50 ({report['proxy_overhead_percent']:+.1f}%)",
        file=out,
    )
    for backend, row in report["backends"].items():
        verdict = "ok" if row["passes_target"] else "OVER TARGET"
        print(
            f"instrumentation overhead, {backend:10}: {row['overhead_percent']:+6.2f}% "
            f"(target <= {report['target_percent']:g}%) {verdict}",
            file=out,
        )
