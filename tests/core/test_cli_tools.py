"""The demo, the bench and the load test, run as a user would: real processes end to end."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

import pytest
import support
from support import clean_environ

ROOT = support.REPO


def test_demo_serves_metrics_and_ends_with_a_summary():
    result = subprocess.run(
        [sys.executable, "-m", "metricsfacade", "demo", "--duration", "8"],
        capture_output=True,
        text=True,
        timeout=90,
        env=clean_environ(METRICSFACADE_PORT="0"),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", out), out
    requests = int(re.search(r"requests\s+(\d+) in", out).group(1))
    assert requests > 500, out  # about 200 a second
    assert re.search(r"latency p50 / p95\s+\d+\.\d+ ms / \d+\.\d+ ms", out), out
    assert re.search(r"proxy-added latency \(mean\)\s+\d+\.\d+ ms", out), out
    errors = re.search(
        r"errors\s+(\d+) \((\d+) rate-limited, (\d+) while the server was down\)", out
    )
    assert errors, out
    assert int(errors.group(2)) > 0, "the burst must go over the rate limit"
    assert int(errors.group(3)) > 0, "the crash must make the server unavailable for a while"
    assert "exit=1" in out, "the scripted crash is an upstream error"


def test_bench_json_carries_the_brief_fields(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricsfacade",
            "bench",
            "--requests",
            "40",
            "--rounds",
            "2",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_environ(),
        check=False,
    )
    report = json.loads(report_path.read_text())
    assert result.returncode == (0 if report["passes_target"] else 1), result.stdout
    assert set(report["paths"]) == {
        "direct",
        "proxy_disabled",
        "proxy_disabled_control",
        "proxy_prometheus",
        "proxy_statsd",
        "proxy_datadog",
        "proxy_all",
    }
    for path in report["paths"].values():
        assert 0 < path["p50"] <= path["p95"] <= path["p99"]
    for backend in ("prometheus", "statsd", "datadog", "all"):
        entry = report["backends"][backend]
        assert set(entry) == {
            "direct_latency",
            "proxy_latency",
            "overhead",
            "overhead_percent",
            "passes_target",
            "round_overhead_percent",
            "recording_cpu",
            "recording_cpu_percent",
        }
        assert entry["passes_target"] == (entry["overhead_percent"] <= report["target_percent"])
        assert len(entry["round_overhead_percent"]) == 2
        assert entry["overhead_percent"] == pytest.approx(
            statistics.median(entry["round_overhead_percent"]), abs=0.01
        )
    assert report["pinned"] == (len(os.sched_getaffinity(0)) >= 2)
    assert isinstance(report["noise_percent"], float)
    assert report["proxy_overhead_target"] == pytest.approx(100e-6)
    assert "proxy's own overhead" in result.stdout
    assert 0 < report["recording_cpu_disabled"] < report["backends"]["all"]["recording_cpu"]
    assert "recording CPU per request" in result.stdout
    assert "instrumentation overhead, prometheus" in result.stdout


def test_load_test_counts_exactly_the_requests_sent():
    result = subprocess.run(
        [str(ROOT / "examples" / "load_test.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environ(CLIENTS="4", DURATION="2"),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sent = int(re.search(r"(\d+) requests sent", result.stdout).group(1))
    counted = int(re.search(r"counted by the proxy: (\d+) tools/call", result.stdout).group(1))
    assert sent == counted > 100
    assert "request duration p95" in result.stdout
