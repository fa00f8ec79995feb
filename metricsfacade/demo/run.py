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
import subprocess
import sys
import time
from typing import TextIO

from metricsfacade.config import load_config
from metricsfacade.demo.client import DemoClient, Outcome
from metricsfacade.demo.observe import ProxyLog, families, fetch, percentile
from metricsfacade.proxy.settings import ProxySettings

SERVER = [sys.executable, "-m", "metricsfacade.demo.server"]
#: The demo's proxy settings, as environment variables (a config file's [proxy] table wins).
DEMO_PROXY_ENV = {
    "METRICSFACADE_PROXY__NAME": "demo-server",
    "METRICSFACADE_PROXY__RATE_LIMITS": "tools/call=150",
    "METRICSFACADE_PROXY__RESTART": "true",
    "METRICSFACADE_PROXY__RESTART_BACKOFF_SECS": "0.2",
    "METRICSFACADE_PROXY__BREAKER_FAILURES": "1",
    "METRICSFACADE_PROXY__BREAKER_RESET_SECS": "3",
}
#: Requests per second of the steady traffic (bursts and crashes come on top).
PACE_PER_SEC = 200.0
BURST_EVERY_SECS = 10.0
CRASH_AT_SECS = 6.0


def run_demo(config_path: str | None, duration: float, out: TextIO) -> int:
    """Run ``metricsfacade proxy`` (a real subprocess) and drive traffic through it."""
    command = [sys.executable, "-m", "metricsfacade", "proxy"]
    if config_path:
        command += ["--config", config_path]
    env = dict(os.environ)
    # Loading also validates the config early.
    if load_config(config_path).table("proxy") == ProxySettings():
        for name, value in DEMO_PROXY_ENV.items():
            env.setdefault(name, value)
    proxy = subprocess.Popen(
        [*command, "--", *SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proxy.stdin is not None
    assert proxy.stdout is not None
    assert proxy.stderr is not None
    log = ProxyLog(proxy.stderr)
    client = DemoClient(proxy.stdin, proxy.stdout)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        outcomes.append(client.initialize())
        url = log.metrics_url(timeout=5)
        if url:
            base = url.rsplit("/", 1)[0]
            print(
                f"metrics: {url}   health: {base}/health   ready: {base}/ready",
                file=out,
                flush=True,  # they serve only while the demo runs: show them now, not at exit
            )
        _drive(client, outcomes, started, duration, out)
    except KeyboardInterrupt:
        pass
    except EOFError:
        print(f"\nthe proxy stopped:\n{log.tail()}", file=out)
        return 1
    finally:
        if out.isatty():
            print(file=out)
    url = log.metrics_url(timeout=0)
    exposition = fetch(url) if url else ""
    proxy.stdin.close()
    proxy.wait(10)
    _summary(outcomes, exposition, time.monotonic() - started, url, out=out)
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
    outcomes: list[Outcome], exposition: str, elapsed: float, url: str | None, *, out: TextIO
) -> None:
    latencies = sorted(outcome.seconds for outcome in outcomes)
    errors = sum(1 for outcome in outcomes if outcome.error_code is not None)
    refused = sum(1 for outcome in outcomes if outcome.error_code == -32002)
    unavailable = sum(1 for outcome in outcomes if outcome.error_code == -32000)
    samples = _samples(exposition)
    count = samples.get("shadowcat_proxy_latency_seconds_count", 0.0)
    added = (
        samples.get("shadowcat_proxy_latency_seconds_sum", math.nan) / count if count else math.nan
    )
    rate = len(outcomes) / max(elapsed, 1e-9)
    rows = [
        ("requests", f"{len(outcomes)} in {elapsed:.1f} s ({rate:.0f}/s)"),
        (
            "latency p50 / p95",
            f"{_ms(percentile(latencies, 0.5))} / {_ms(percentile(latencies, 0.95))}",
        ),
        ("proxy-added latency (mean)", _ms(added)),
        ("errors", f"{errors} ({refused} rate-limited, {unavailable} while the server was down)"),
        ("upstream errors", _by_label(exposition, "shadowcat_upstream_errors_total", "error_type")),
    ]
    if url:  # the proxy has exited: its endpoint no longer answers
        rows.append(("endpoint", f"closed; it served {url}, /health and /ready while the demo ran"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)


def _by_label(exposition: str, sample_name: str, label: str) -> str:
    """``a=1, b=2``: a counter's values by one label."""
    counts: dict[str, float] = {}
    for family in families(exposition).values():
        for sample in family.samples:
            if sample.name == sample_name and sample.value:
                key = sample.labels.get(label, "")
                counts[key] = counts.get(key, 0.0) + sample.value
    return ", ".join(f"{key}={value:g}" for key, value in sorted(counts.items())) or "none"


def _samples(exposition: str) -> dict[str, float]:
    """Each sample name's total over its label sets."""
    totals: dict[str, float] = {}
    for family in families(exposition).values():
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


__all__ = ["run_demo"]
