"""The examples as a user runs them, in real processes: the quickstart serves real metrics,
the load test's percentiles are its own timings, the demo's URLs serve while it runs."""

from __future__ import annotations

import json
import math
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import IO

import pytest
import support
from support import clean_environ, eventually

ROOT = support.REPO
EXAMPLE = ROOT / "examples" / "quickstart.py"
LOAD_TEST = ROOT / "examples" / "load_test.sh"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_quickstart_serves_metrics_health_and_ready_until_interrupted():
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        assert first_line.startswith("serving http://127.0.0.1:"), first_line
        base = first_line.split()[1].removesuffix("/metrics")
        eventually(lambda: _get(base + "/ready")[0] == 200, 10, 0.1, message="never became ready")
        status, body = _get(base + "/metrics")
        assert status == 200
        text = body.decode()
        assert "demo_requests_total{" in text
        assert 'demo_request_duration_seconds_bucket{le="+Inf"' in text
        assert _get(base + "/health") == (200, b'{"status": "ok"}\n')
        assert json.loads(_get(base + "/ready")[1]) == {"status": "ready"}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "stopped after" in out


def test_load_test_percentiles_are_its_own_client_side_timings(tmp_path):
    samples_path = tmp_path / "samples.txt"
    clients, duration = 4, 2
    result = subprocess.run(
        [str(LOAD_TEST), "--samples", str(samples_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environ(CLIENTS=str(clients), DURATION=str(duration)),
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "client-side percentiles: this script timed each of the" in out
    samples = sorted(float(line) for line in samples_path.read_text().split())
    sent = int(re.search(r"(\d+) requests sent", out).group(1))
    assert len(samples) == sent > 100
    for quantile in (0.5, 0.95, 0.99):
        printed = re.search(rf"request duration p{round(quantile * 100)}: (\S+) ms", out)
        nearest_rank = samples[math.ceil(quantile * len(samples)) - 1]
        assert printed.group(1) == f"{nearest_rank * 1e3:.3f}", out
    # Each client waits for one answer at a time: its round trips fit within its run.
    assert 0 < sum(samples) <= clients * (duration + 10)
    assert re.search(
        r"proxy-added latency \(from /metrics\): mean \d+\.\d{3} ms; "
        r"p99 between [\d.]+ and [\d.]+ ms \(a histogram bucket, no finer\)",
        out,
    ), out


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The stream's lines as they come (None at its end), to wait on with a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _rest(lines: queue.Queue[str | None], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    rest = []
    while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
        rest.append(line)
    return "".join(rest)


def test_demo_prints_its_urls_while_they_serve_and_says_they_closed(tmp_path):
    stderr = (tmp_path / "stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "metricsfacade", "demo", "--duration", "6"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=clean_environ(METRICSFACADE_PORT="0"),
    )
    try:
        lines = _lines(process.stdout)
        first = lines.get(timeout=30)
        urls = re.fullmatch(r"metrics: (\S+)   health: (\S+)   ready: (\S+)\n", first)
        assert urls, first
        metrics, health, ready = urls.groups()
        status, body = _get(metrics)
        assert status == 200
        assert b"# HELP shadowcat_requests_total " in body
        assert _get(health)[0] == 200
        assert _get(ready)[0] in (200, 503)  # it answers; ready or not depends on the crash
        rest = _rest(lines, timeout=60)
        assert process.wait(timeout=10) == 0, rest
    finally:
        process.kill()
        process.wait()
        stderr.close()
    assert re.search(
        rf"endpoint\s+closed; it served {re.escape(metrics)}, /health and /ready "
        r"while the demo ran\n",
        rest,
    ), rest
    with pytest.raises(urllib.error.URLError):
        _get(metrics)
