"""``metricsfacade demo``: the proxy in front of the bundled server, under realistic traffic.

Shows progress on one line, and ends (at ``--duration`` or on Ctrl-C) with a summary.
Steady traffic of about 200 requests per second, plus scripted events: a burst of 300
tools/call every 10 s (over its rate limit of 150/s, so some are refused), and a server crash
that opens the circuit breaker; 3 s later it half-opens, restarts the server (replaying the
client's initialize) and closes on the first success.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import TextIO

import attrs

import metricsfacade as mf
from metricsfacade.backends.store import HistogramCell, StoreBackend
from metricsfacade.config import ConfigSource, MetricsConfig, load_config
from metricsfacade.demo.client import DemoClient, Outcome
from metricsfacade.proxy import StdioProxy
from metricsfacade.shadowcat import ShadowcatMetrics, SystemCollector

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]
#: The demo's proxy settings when the config leaves them at their defaults.
DEMO_PROXY = {
    "name": "demo-server",
    "rate_limits": {"tools/call": 150.0},
    "restart": True,
    "restart_backoff_secs": 0.2,
    "breaker_failures": 1,
    "breaker_reset_secs": 3.0,
}
#: Requests per second of the steady traffic (bursts and crashes come on top).
PACE_PER_SEC = 200.0
BURST_EVERY_SECS = 10.0
CRASH_AT_SECS = 6.0


def demo_config(source: ConfigSource) -> MetricsConfig:
    config = load_config(source)
    if config.proxy == MetricsConfig().proxy:
        config = attrs.evolve(config, proxy=load_config({"proxy": DEMO_PROXY}, environ={}).proxy)
    return config


def run_demo(source: ConfigSource, duration: float, out: TextIO) -> int:
    config = demo_config(source)
    facade = mf.configure(config, environ={})
    shadowcat = ShadowcatMetrics(facade)
    SystemCollector(facade)
    client_read, proxy_write = os.pipe()
    proxy_read, client_write = os.pipe()
    proxy = StdioProxy(
        SERVER,
        config.proxy,
        shadowcat,
        os.fdopen(proxy_read, "rb"),
        os.fdopen(proxy_write, "wb"),
    )
    facade.add_readiness_check("upstream", lambda: proxy.ready)
    runner = threading.Thread(target=proxy.run, name="demo-proxy", daemon=True)
    runner.start()
    client = DemoClient(os.fdopen(client_write, "wb"), os.fdopen(client_read, "rb"))
    url = facade.endpoint_url
    if url:
        print(f"metrics: {url}{config.path}   health: {url}/health   ready: {url}/ready", file=out)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        outcomes.append(client.initialize())
        _drive(client, outcomes, started, duration, out)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
        runner.join(5)
        if out.isatty():
            print(file=out)
        _summary(outcomes, facade, time.monotonic() - started, url, config, out=out)
        facade.close()
    return 0


def _drive(
    client: DemoClient, outcomes: list[Outcome], started: float, duration: float, out: TextIO
) -> None:
    next_burst = started + BURST_EVERY_SECS / 2
    crashed = False
    progress = _Progress(out, started)
    sent = 0
    while duration <= 0 or time.monotonic() - started < duration:
        now = time.monotonic()
        if not crashed and now - started >= CRASH_AT_SECS:
            crashed = True
            outcomes.append(client.crash_server())
        if now >= next_burst:
            next_burst = now + BURST_EVERY_SECS
            for _ in range(300):
                outcomes.append(client.request("tools/call", {"name": "echo", "arguments": {}}))
        outcomes.append(client.typical())
        sent += 1
        ahead = started + sent / PACE_PER_SEC - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        progress.show(outcomes)


class _Progress:
    """One line, rewritten in place on a terminal; a line every 5 s elsewhere (CI logs)."""

    def __init__(self, out: TextIO, started: float) -> None:
        self._out = out
        self._started = started
        self._tty = out.isatty()
        self._every = 0.5 if self._tty else 5.0
        self._last = 0.0

    def show(self, outcomes: list[Outcome]) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        errors = sum(1 for outcome in outcomes if outcome.error_code is not None)
        text = f"{now - self._started:6.1f}s  requests {len(outcomes):7d}  errors {errors:6d}"
        print(
            f"\r{text}" if self._tty else text,
            end="" if self._tty else "\n",
            file=self._out,
            flush=True,
        )


def _summary(
    outcomes: list[Outcome],
    facade: mf.Metrics,
    elapsed: float,
    url: str | None,
    config: MetricsConfig,
    *,
    out: TextIO,
) -> None:
    latencies = sorted(outcome.seconds for outcome in outcomes) or [math.nan]
    errors = sum(1 for outcome in outcomes if outcome.error_code is not None)
    refused = sum(1 for outcome in outcomes if outcome.error_code == -32002)
    unavailable = sum(1 for outcome in outcomes if outcome.error_code == -32000)
    added = _proxy_added(facade)
    rows = [
        (
            "requests",
            f"{len(outcomes)} in {elapsed:.1f} s ({len(outcomes) / max(elapsed, 1e-9):.0f}/s)",
        ),
        (
            "latency p50 / p95",
            f"{_ms(_quantile(latencies, 0.5))} / {_ms(_quantile(latencies, 0.95))}",
        ),
        ("proxy-added latency (mean)", _ms(added)),
        ("errors", f"{errors} ({refused} rate-limited, {unavailable} while the server was down)"),
    ]
    if url:
        rows.append(("metrics", f"{url}{config.path}"))
        rows.append(("health / ready", f"{url}/health  {url}/ready"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)


def _quantile(ordered: list[float], quantile: float) -> float:
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def _proxy_added(facade: mf.Metrics) -> float:
    """Mean of shadowcat_proxy_latency_seconds, read from the Prometheus backend's cells."""
    try:
        backend = facade.backend("prometheus")
    except KeyError:
        return math.nan  # a push-only config: the agents have it
    assert isinstance(backend, StoreBackend)
    stored = backend.store.get("shadowcat_proxy_latency_seconds")
    count = total = 0.0
    for _, cell in backend.store.snapshot(stored) if stored else ():
        if isinstance(cell, HistogramCell):
            reading = cell.read()
            count += reading.count
            total += reading.sum
    return total / count if count else math.nan


__all__ = ["run_demo"]
