"""The README's first command: the quickstart example serves real metrics in a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


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
        deadline = time.monotonic() + 10
        while _get(base + "/ready")[0] != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
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
