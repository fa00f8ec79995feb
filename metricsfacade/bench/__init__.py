"""``metricsfacade bench``: what the proxy and its instrumentation cost per request.

Every path runs at once as a long-lived process pair, and rounds interleave them so that
noise on a shared machine hits every path alike:

- ``direct``: the client talks to the bundled MCP server itself;
- ``proxy_disabled``: through ``metricsfacade proxy`` with ``enabled = false``, and
  ``proxy_disabled_control``, the same again: how far two identical paths differ is the
  bench's noise floor;
- ``proxy_<backend>``: through the proxy recording into prometheus, statsd or datadog (the
  last two to local UDP receivers), and ``proxy_all`` into all three.

Each round starts fresh processes for every path and sends ``requests`` ``tools/call``
requests down each, one at a time and taking turns in a random order (request 1 on every
path, then request 2...), so every path sees the same moments and the same neighbours, with
a short pause after each, so that what a path does after answering (recording the request)
is charged to nobody else. With two CPUs or more, every path gets the same
placement too (the client and the servers on one CPU, the proxies on another): left to the
scheduler, two identical paths differ by up to 7 % in a round here, pinned by a few. The
instrumentation overhead of a backend is its path against ``proxy_disabled``, in percent:
the median, over rounds, of the ratio of the two paths' median latencies in that round.

The proxy's own overhead (``proxy_disabled`` against ``direct``) has rounds of its own,
placed otherwise: the client alone on one CPU, server and proxy on the other. There, direct
and proxied messages cross between the client and the rest alike, and the proxy adds only
its own hop; in the layout above, every message to or from a proxy crosses CPUs and direct
ones do not, which would charge the proxy for the placement.

Beside the instrumentation overhead, the CPU time the proxy's bookkeeping spends per request
with each backend (``bench.recording``): the bound on that overhead should all of it ever
fall on the round trip.

While pinned, a spinner at the lowest priority (``SCHED_IDLE``: it runs only when nothing
else wants the CPU) keeps each CPU out of its idle states: a halted virtual CPU takes tens
of microseconds to wake, which put this machine's p95 near 2 ms without it (about 0.5 ms
with it) and widened the spread between rounds.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from metricsfacade.bench.peer import Peer
from metricsfacade.bench.placement import (
    Placement,
    client_apart,
    client_on,
    kept_awake,
    proxies_apart,
    two_cpus,
)
from metricsfacade.bench.recording import cpu_per_request

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]
BACKEND_PATHS = ("prometheus", "statsd", "datadog", "all")
BASELINE, CONTROL = "proxy_disabled", "proxy_disabled_control"
WARMUP_REQUESTS = 30
#: A pause after each request, so that work a path does after answering (recording it)
#: is not charged to the next path's request.
SETTLE_SECS = 0.0003
DEFAULT_TARGET_PERCENT = 5.0
#: The proxy's own p50 overhead over direct stdio that we aim for (printed, not a gate).
PROXY_OVERHEAD_TARGET_SECS = 100e-6


# -- the bench ---------------------------------------------------------------------------------


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


@attrs.define
class _Samples:
    """One path's figures: every latency, and each round's median."""

    latencies: list[float] = attrs.Factory(list)
    round_medians: list[float] = attrs.Factory(list)


def _paths(receiver_port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    proxy = [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0", "--", *SERVER]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("METRICSFACADE_", "DD_"))}
    push = {
        "METRICSFACADE_STATSD__PORT": str(receiver_port),
        "METRICSFACADE_DATADOG__HOST": "127.0.0.1",
        "METRICSFACADE_DATADOG__PORT": str(receiver_port),
    }
    disabled = (proxy, {**clean, "METRICSFACADE_ENABLED": "false"})
    paths = {"direct": (SERVER, clean), BASELINE: disabled, CONTROL: disabled}
    for backend in BACKEND_PATHS:
        backends = _backend_list(backend)
        paths[f"proxy_{backend}"] = (proxy, {**clean, **push, "METRICSFACADE_BACKENDS": backends})
    return paths


def run_bench(
    requests: int, rounds: int, target_percent: float, *, pin: bool = True
) -> dict[str, Any]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the agents' stand-in
    receiver.bind(("127.0.0.1", 0))
    paths = _paths(receiver.getsockname()[1])
    cpus = two_cpus() if pin else None
    samples = {name: _Samples() for name in paths}
    try:
        hop_paths = {name: paths[name] for name in ("direct", BASELINE)}
        hops = {name: _Samples() for name in hop_paths}
        with kept_awake(cpus):
            for round_index in range(rounds):
                _round(paths, requests, round_index, samples, cpus=cpus, placement=proxies_apart)
                if cpus is not None:  # the proxy's own overhead, in a layout fair to it
                    _round(
                        hop_paths, requests, round_index, hops, cpus=cpus, placement=client_apart
                    )
        port = receiver.getsockname()[1]
        recording = {
            name: cpu_per_request("disabled" if name == "disabled" else _backend_list(name), port)
            for name in ("disabled", *BACKEND_PATHS)
        }
    finally:
        receiver.close()
    return _report(
        samples,
        hops if cpus is not None else samples,
        recording,
        requests=requests,
        rounds=rounds,
        target_percent=target_percent,
        pinned=cpus is not None,
    )


def _backend_list(backend: str) -> str:
    return "prometheus,statsd,datadog" if backend == "all" else backend


def _round(
    paths: dict[str, tuple[list[str], dict[str, str]]],
    requests: int,
    round_index: int,
    samples: dict[str, _Samples],
    *,
    cpus: tuple[int, int] | None,
    placement: Placement,
) -> None:
    """One round on fresh processes, the paths taking turns request by request."""
    peers = {name: Peer(command, env) for name, (command, env) in paths.items()}
    params = {"name": "echo", "arguments": {"text": "benchmark"}}
    try:
        with client_on(cpus[0] if cpus else None):
            for name, peer in peers.items():
                if cpus is not None:
                    placement(peer.pid, name != "direct", cpus)
                for _ in range(WARMUP_REQUESTS):
                    peer.call("tools/call", params)
            order = list(peers)
            shuffle = random.Random(round_index).shuffle
            latencies: dict[str, list[float]] = {name: [] for name in order}
            for _ in range(requests):
                shuffle(order)  # a fixed order would give each path the same predecessor
                for name in order:
                    latencies[name].append(peers[name].call("tools/call", params))
                    time.sleep(SETTLE_SECS)
    finally:
        for peer in peers.values():
            peer.close()
    for name, values in latencies.items():
        path = samples[name]
        path.latencies.extend(values)
        path.round_medians.append(statistics.median(values))


def _report(
    samples: dict[str, _Samples],
    hops: dict[str, _Samples],
    recording: dict[str, float],
    *,
    requests: int,
    rounds: int,
    target_percent: float,
    pinned: bool,
) -> dict[str, Any]:
    stats = {name: PathStats.of(s.latencies) for name, s in samples.items()}
    base = samples[BASELINE]

    def round_percents(mine: _Samples, theirs: _Samples) -> list[float]:
        return [
            round(100 * (a - b) / b, 3)
            for a, b in zip(mine.round_medians, theirs.round_medians, strict=True)
        ]

    backends = {}
    for backend in BACKEND_PATHS:
        name = f"proxy_{backend}"
        per_round = round_percents(samples[name], base)
        percent = statistics.median(per_round)
        backends[backend] = {
            "direct_latency": stats["direct"].p50,
            "proxy_latency": stats[name].p50,
            "overhead": stats[name].p50 - stats[BASELINE].p50,
            "overhead_percent": round(percent, 3),
            "passes_target": percent <= target_percent,
            "round_overhead_percent": per_round,
            "recording_cpu": recording[backend],
            "recording_cpu_percent": round(
                100 * (recording[backend] - recording["disabled"]) / stats[BASELINE].p50, 3
            ),
        }
    proxied, direct = hops[BASELINE], hops["direct"]
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "target_percent": target_percent,
        "pinned": pinned,
        "paths": {name: attrs.asdict(value) for name, value in stats.items()},
        "proxy_overhead_p50": statistics.median(
            a - b for a, b in zip(proxied.round_medians, direct.round_medians, strict=True)
        ),
        "proxy_overhead_percent": round(statistics.median(round_percents(proxied, direct)), 3),
        "proxy_overhead_target": PROXY_OVERHEAD_TARGET_SECS,
        "noise_percent": round(statistics.median(round_percents(samples[CONTROL], base)), 3),
        "recording_cpu_disabled": recording["disabled"],
        "backends": backends,
        "passes_target": all(entry["passes_target"] for entry in backends.values()),
    }


def print_report(report: dict[str, Any], out: IO[str]) -> None:
    us = 1e6
    print(f"{'path':23} {'p50 µs':>8} {'p95 µs':>8} {'p99 µs':>8} {'mean µs':>8}", file=out)
    for name, row in report["paths"].items():
        print(
            f"{name:23} {row['p50'] * us:8.1f} {row['p95'] * us:8.1f} {row['p99'] * us:8.1f} "
            f"{row['mean'] * us:8.1f}",
            file=out,
        )
    placement = "pinned (client and servers on one CPU, proxies on another), CPUs kept awake"
    print(
        f"{report['rounds']} rounds of {report['requests_per_round']} requests per path; "
        f"{placement if report['pinned'] else 'not pinned'}",
        file=out,
    )
    where = " in rounds of their own (the client on one CPU, server and proxy on the other)"
    print(
        f"proxy's own overhead, disabled vs direct{where if report['pinned'] else ''}: "
        f"{report['proxy_overhead_p50'] * us:.1f} µs per request p50 "
        f"({report['proxy_overhead_percent']:+.1f}%; aim <= "
        f"{report['proxy_overhead_target'] * us:.0f} µs)",
        file=out,
    )
    print(f"noise floor (two identical disabled paths): {report['noise_percent']:+.2f}%", file=out)
    for backend, row in report["backends"].items():
        verdict = "ok" if row["passes_target"] else "OVER TARGET"
        rounds = " ".join(f"{percent:+.1f}" for percent in row["round_overhead_percent"])
        print(
            f"instrumentation overhead, {backend:10}: {row['overhead_percent']:+6.2f}% "
            f"(target <= {report['target_percent']:g}%) {verdict}  [rounds: {rounds}]",
            file=out,
        )
    print(
        "recording CPU per request, in process (the bound if all of it fell on the round "
        f"trip): disabled {report['recording_cpu_disabled'] * us:.1f} µs",
        file=out,
    )
    for backend, row in report["backends"].items():
        extra = row["recording_cpu"] - report["recording_cpu_disabled"]
        print(
            f"  {backend:10}: {row['recording_cpu'] * us:5.1f} µs, {extra * us:+5.1f} µs = "
            f"{row['recording_cpu_percent']:+.1f}% of the metrics-disabled proxy's p50",
            file=out,
        )
