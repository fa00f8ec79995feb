"""Start and query real external sinks (a Prometheus server, promtool) from tests.

Standard library only, so importing this module (conftest.py does) stays cheap.

A missing executable skips the test, unless the environment variable ``REQUIRE_REAL_SINKS``
is set to ``1`` (CI does): then it fails, so CI can never silently skip a real-sink test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

#: Set to 1 to turn "tool not found, skipped" into a test failure.
REQUIRE_ENV = "REQUIRE_REAL_SINKS"

#: How long to poll the query API for a first result. Prometheus only starts scraping about
#: 5 s after it is ready (its service discovery batches updates), even with a 1 s interval.
QUERY_TIMEOUT_SECS = 20.0
READY_TIMEOUT_SECS = 15.0
POLL_SECS = 0.2


def sinks_required() -> bool:
    """True when REQUIRE_REAL_SINKS asks for real sinks to be mandatory."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def require_tool(name: str) -> str:
    """The path of executable ``name``; skip the test if it is missing (fail under CI)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name!r} is not on PATH ({os.environ.get('PATH', '')!r})"
    if sinks_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {message}", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body). HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# -- Prometheus server ---------------------------------------------------------------------


def _scrape_job(job: str, target: str) -> dict[str, Any]:
    """A scrape job for ``target``: ``host:port`` or a URL like ``http://host:port/metrics``."""
    if "://" not in target:
        target = f"http://{target}"
    parts = urllib.parse.urlsplit(target)
    return {
        "job_name": job,
        "scheme": parts.scheme,
        "metrics_path": parts.path or "/metrics",
        "static_configs": [{"targets": [parts.netloc]}],
    }


def prometheus_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """A config scraping each ``{job_name: target}`` every second."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [_scrape_job(job, target) for job, target in targets.items()],
    }


class PrometheusServer:
    """A running ``prometheus`` process. Always ``stop()`` it (the fixtures do)."""

    def __init__(
        self, process: subprocess.Popen[bytes], url: str, log_path: Path, config_path: Path
    ) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.config_path = config_path

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def diagnostics(self) -> str:
        """Target health (the scrape errors) and the end of the server's log."""
        return f"{targets_summary(self.url)}\nprometheus log ({self.log_path}):\n{self.log_tail()}"

    def query(self, promql: str, timeout: float = QUERY_TIMEOUT_SECS) -> list[dict[str, Any]]:
        """Poll until ``promql`` has a non-empty result; see :func:`query`."""
        return query(self.url, promql, timeout=timeout, diagnostics=self.diagnostics)

    def query_once(self, promql: str) -> list[dict[str, Any]]:
        """One evaluation of ``promql``: the result may be empty."""
        return query_once(self.url, promql, diagnostics=self.diagnostics)

    def stop(self) -> None:
        """Terminate the process and wait for it (kill it if it does not exit in 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __repr__(self) -> str:
        return f"<PrometheusServer {self.url} pid={self.process.pid}>"


def start_prometheus(
    binary: str, workdir: Path, targets: Mapping[str, str], attempts: int = 3
) -> PrometheusServer:
    """Start Prometheus on a free loopback port scraping ``{job_name: target}`` every second,
    and wait until ``/-/ready`` answers 200. Files (config, TSDB, log) go in ``workdir``.

    Retries on another port if the chosen one was taken in the meantime.
    """
    config_path = workdir / "prometheus.yml"
    # JSON is YAML: no YAML library needed.
    config_path.write_text(json.dumps(prometheus_config(targets), indent=2))
    for attempt in range(1, attempts + 1):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = workdir / f"prometheus-{attempt}.log"
        command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        server = PrometheusServer(process, url, log_path, config_path)
        try:
            if _wait_ready(server):
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()
        tail = server.log_tail()
        if "address already in use" not in tail or attempt == attempts:
            raise AssertionError(
                f"prometheus did not become ready on {url} (exit code {process.returncode}); "
                f"command: {' '.join(command)}\nconfig:\n{config_path.read_text()}\n"
                f"log ({log_path}):\n{tail}"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _wait_ready(server: PrometheusServer, timeout: float = READY_TIMEOUT_SECS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            status, _, _ = http_get(f"{server.url}/-/ready", timeout=1.0)
        except OSError:
            status = 0
        if status == 200:
            return True
        time.sleep(0.05)
    return False


def targets_summary(prom_url: str) -> str:
    """One line per scrape target: job, URL, health and last error."""
    try:
        _, _, body = http_get(f"{prom_url}/api/v1/targets", timeout=2.0)
        active = json.loads(body)["data"]["activeTargets"]
    except (OSError, ValueError, KeyError) as exc:
        return f"targets: unavailable ({exc!r})"
    lines = [
        f"  {t['labels'].get('job')} {t['scrapeUrl']}: health={t['health']} "
        f"lastError={t['lastError']!r} lastScrape={t['lastScrape']}"
        for t in active
    ]
    return "targets:\n" + ("\n".join(lines) or "  (none)")


def query_once(
    prom_url: str, promql: str, diagnostics: Callable[[], str] | None = None
) -> list[dict[str, Any]]:
    """Evaluate ``promql`` now (``/api/v1/query``) and return ``data.result``.

    A rejected query fails at once, with Prometheus' error message.
    """
    url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    status, _, body = http_get(url)
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {}
    if status != 200 or payload.get("status") != "success":
        extra = f"\n{diagnostics()}" if diagnostics else ""
        raise AssertionError(
            f"query {promql!r} failed: HTTP {status}: {body.decode(errors='replace')}{extra}"
        )
    result: list[dict[str, Any]] = payload["data"]["result"]
    if payload["data"]["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": result}]
    return result


def query(
    prom_url: str,
    promql: str,
    timeout: float = QUERY_TIMEOUT_SECS,
    diagnostics: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """Poll ``promql`` until its result is non-empty (up to ``timeout`` s) and return it:
    a list of ``{"metric": {labels}, "value": [timestamp, "value"]}``."""
    deadline = time.monotonic() + timeout
    while True:
        result = query_once(prom_url, promql, diagnostics)
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = diagnostics() if diagnostics else targets_summary(prom_url)
            raise AssertionError(
                f"query {promql!r} still had no result after {timeout:g} s\n{extra}"
            )
        time.sleep(POLL_SECS)


def value(sample: Mapping[str, Any]) -> float:
    """The float value of one instant-vector sample."""
    return float(sample["value"][1])


def single_value(result: list[dict[str, Any]], promql: str = "") -> float:
    """The value of a result that must hold exactly one sample."""
    assert len(result) == 1, f"expected one sample for {promql!r}, got {result}"
    number = value(result[0])
    assert not math.isnan(number), f"{promql!r} is NaN: {result}"
    return number


# -- promtool ------------------------------------------------------------------------------


def promtool_check_metrics(promtool: str, exposition: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` with the exposition on stdin (exit 1: parse error, 3: lint)."""
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def describe_run(result: subprocess.CompletedProcess[str], stdin: bytes = b"") -> str:
    text = (
        f"$ {' '.join(result.args)}  -> exit code {result.returncode}\n"
        f"stdout:\n{result.stdout or '(empty)'}\nstderr:\n{result.stderr or '(empty)'}"
    )
    if stdin:
        text += f"\nstdin:\n{stdin.decode(errors='replace')}"
    return text
