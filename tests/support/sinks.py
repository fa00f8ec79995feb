"""Start and query real external sinks (a Prometheus server, promtool, the Etsy StatsD
daemon) and real MCP peers (the reference server ``mcp-server-everything``, the proxy's
stderr log) from tests.

Standard library only, so importing this module (conftest.py does) stays cheap. Its waits poll
with :func:`support.eventually`.

A missing executable (or StatsD install) skips the test, unless the environment variable
``REQUIRE_REAL_SINKS`` is set to ``1`` (CI does): then it fails, so CI can never silently skip
a real-sink test.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from support import (
    REQUIRE_ENV,
    clean_environ,
    eventually,
    http_get,
    sinks_required,
    strict_statsd,
    unavailable,
)

__all__ = ["REQUIRE_ENV", "clean_environ", "http_get", "sinks_required", "unavailable"]

#: How long to poll the query API for a first result. Prometheus only starts scraping about
#: 5 s after it is ready (its service discovery batches updates), even with a 1 s interval.
QUERY_TIMEOUT_SECS = 20.0
READY_TIMEOUT_SECS = 15.0
POLL_SECS = 0.2


def require_tool(name: str) -> str:
    """The path of executable ``name``; skip the test if it is missing (fail under CI)."""
    path = shutil.which(name)
    if path is not None:
        return path
    unavailable(f"{name!r} is not on PATH ({os.environ.get('PATH', '')!r})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def prometheus_config(targets: Mapping[str, str], scrape_interval: str = "1s") -> dict[str, Any]:
    """A config scraping each ``{job_name: target}`` every ``scrape_interval`` (a Prometheus
    duration; each scrape times out after one interval)."""
    jobs = [_scrape_job(job, target) for job, target in targets.items()]
    for job in jobs:
        job["scrape_timeout"] = scrape_interval
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` and wait for it (kill it if it does not exit in 10 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
        stop_process(self.process)

    def __repr__(self) -> str:
        return f"<PrometheusServer {self.url} pid={self.process.pid}>"


def start_prometheus(
    binary: str,
    workdir: Path,
    targets: Mapping[str, str],
    attempts: int = 3,
    scrape_interval: str = "1s",
) -> PrometheusServer:
    """Start Prometheus on a free loopback port scraping ``{job_name: target}`` every
    ``scrape_interval``, and wait until ``/-/ready`` answers 200. Files (config, TSDB, log)
    go in ``workdir``.

    Retries on another port if the chosen one was taken in the meantime.
    """
    config_path = workdir / "prometheus.yml"
    # JSON is YAML: no YAML library needed.
    config_path.write_text(json.dumps(prometheus_config(targets, scrape_interval), indent=2))
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

        failure = (
            f"prometheus did not become ready on {url}; command: {' '.join(command)}\n"
            f"config:\n{config_path.read_text()}"
        )
        if _started(server, _wait_ready, "address already in use", attempt == attempts, failure):
            return server
    raise AssertionError("unreachable")  # pragma: no cover


class _Sink(Protocol):
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str: ...

    def stop(self) -> None: ...


SinkT = TypeVar("SinkT", bound=_Sink)


def _started(
    sink: SinkT,
    ready: Callable[[SinkT], bool],
    port_taken: str,
    last: bool,
    failure: str,
) -> bool:
    """True once ``sink`` is ready. False (stopped) when its log says its port was taken and
    another attempt may follow; else AssertionError with ``failure``, the exit code and the
    log's tail."""
    try:
        if ready(sink):
            return True
    except BaseException:
        sink.stop()
        raise
    sink.stop()
    tail = sink.log_tail()
    if port_taken not in tail or last:
        raise AssertionError(
            f"{failure}\nexit code {sink.process.returncode}; log ({sink.log_path}):\n{tail}"
        )
    return False


def _wait_ready(server: PrometheusServer, timeout: float = READY_TIMEOUT_SECS) -> bool:
    """True once ``/-/ready`` answers 200; False if the process exits or ``timeout`` passes."""

    def settled() -> str:
        if server.process.poll() is not None:
            return "exited"
        try:
            status, _, _ = http_get(f"{server.url}/-/ready", timeout=1.0)
        except OSError:
            status = 0
        return "ready" if status == 200 else ""

    return eventually(settled, timeout, 0.05, fail=False) == "ready"


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

    def failure() -> str:
        extra = diagnostics() if diagnostics else targets_summary(prom_url)
        return f"query {promql!r} had no result\n{extra}"

    return eventually(
        lambda: query_once(prom_url, promql, diagnostics), timeout, POLL_SECS, message=failure
    )


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


# -- the Etsy StatsD daemon ----------------------------------------------------------------

#: Where scripts/install-test-deps installs the daemon with npm (``TEST_SINKS_DIR`` overrides).
SINKS_DIR_ENV = "TEST_SINKS_DIR"
DEFAULT_SINKS_DIR = Path.home() / ".cache" / "metricsfacade" / "sinks"
STATSD_PACKAGE = Path("node_modules") / "statsd"
#: Long enough that no flush ever runs during a test. In 0.9.0 a flush (with
#: ``deleteIdleStats: false``) sets every counter back to 0 (``statsd.*`` ones included) and
#: empties every timer list, keeping gauges (checked with a 1 s interval), which would make
#: what the management port shows depend on timing.
STATSD_FLUSH_INTERVAL_MS = 1_000_000
STATSD_READY_TIMEOUT_SECS = 10.0
#: How long to wait for UDP lines to be processed by the daemon.
STATSD_WAIT_SECS = 5.0
STATSD_POLL_SECS = 0.02
#: The daemon's own counters (prefix ``statsd``); they are in every ``counters`` answer.
STATSD_BAD_LINES = "statsd.bad_lines_seen"
STATSD_PACKETS = "statsd.packets_received"
STATSD_METRICS = "statsd.metrics_received"
STATSD_OWN_COUNTERS = frozenset({STATSD_BAD_LINES, STATSD_PACKETS, STATSD_METRICS})
#: util.inspect (which the management port uses) shows at most this many array items.
INSPECT_MAX_ARRAY_LENGTH = 100


def statsd_package_dir() -> Path:
    """The installed npm package (it may not exist: see :func:`require_statsd`)."""
    base = os.environ.get(SINKS_DIR_ENV, "").strip()
    return (Path(base) if base else DEFAULT_SINKS_DIR) / STATSD_PACKAGE


def require_statsd() -> tuple[str, Path]:
    """``(node, stats.js)``; skip the test if either is missing (fail under CI)."""
    stats_js = statsd_package_dir() / "stats.js"
    if not stats_js.is_file():
        unavailable(
            f"the StatsD daemon is not installed ({stats_js} does not exist): run "
            f"scripts/install-test-deps (it installs statsd@0.9.0 with npm under "
            f"${SINKS_DIR_ENV}, default {DEFAULT_SINKS_DIR})"
        )
    return require_tool("node"), stats_js


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: The daemon's stock ``servers/udp.js`` with one change: the socket asks for a large receive
#: buffer (Node's ``recvBufferSize``) and logs the size it got once bound. With the default
#: buffer (``net.core.rmem_default``, 212,992 bytes here) the kernel holds only ~92 datagrams
#: (each costs ~2,304 bytes of buffer, whatever its size up to 1,432 bytes), and a client
#: that sends a burst of full datagrams faster than Node reads them loses the rest (the
#: ``drops`` column of /proc/net/udp counts them). Production StatsD hosts raise the buffer
#: for the same reason. The kernel caps the request at ``net.core.rmem_max`` (doubled).
UDP_SERVER_JS = """\
const dgram = require('dgram');
exports.start = function (config, callback) {
  const server = dgram.createSocket(
    {type: config.address_ipv6 ? 'udp6' : 'udp4', recvBufferSize: config.recvBufferSize},
    callback);
  server.on('listening', function () {
    process.stdout.write('metricsfacade-tests: udp receive buffer: ' +
      server.getRecvBufferSize() + ' bytes\\n');
  });
  server.bind(config.port || 8125, config.address || undefined);
  this.server = server;
  return true;
};
"""
UDP_BUFFER_LOG_RE = re.compile(r"metricsfacade-tests: udp receive buffer: (\d+) bytes")
#: Receive buffer asked for the daemon's UDP socket (the kernel may grant less).
STATSD_UDP_RECEIVE_BUFFER = 8 * 1024 * 1024
#: Receive-buffer bytes one datagram of up to 1,432 bytes costs on Linux (its skb truesize),
#: measured: a 212,992-byte buffer holds 92 of them.
UDP_DATAGRAM_BUFFER_COST = 2304


#: A daemon backend for :func:`start_statsd_daemon` ``(totals=True)``. The management console
#: shows no ``timer_counters`` (how many observations a timer's values stand for: each value
#: of a ``|@rate`` line counts ``1/rate``), only the timer lists, which util.inspect cuts at
#: 100 items. A backend gets them at every flush, as Graphite would (``stats.timers.*.count``):
#: this one sums what every flush hands it and answers the console's ``stats`` command with
#: ``totals_counters.<key>``, ``totals_timer_counts.<key>`` (sums over flushes) and
#: ``totals_gauges.<key>`` (the last value), and ``totals.flushes``.
TOTALS_BACKEND_JS = """\
const counters = {}, timerCounts = {}, gauges = {};
let flushes = 0;
exports.init = function (startupTime, config, events) {
  events.on('flush', function (timestamp, metrics) {
    for (const key in metrics.counters) {
      counters[key] = (counters[key] || 0) + metrics.counters[key];
    }
    for (const key in metrics.timer_counters) {
      timerCounts[key] = (timerCounts[key] || 0) + metrics.timer_counters[key];
    }
    for (const key in metrics.gauges) {
      gauges[key] = metrics.gauges[key];
    }
    flushes++;
  });
  events.on('status', function (write) {
    write(null, 'totals', 'flushes', flushes);
    for (const key in counters) { write(null, 'totals_counters', key, counters[key]); }
    for (const key in timerCounts) { write(null, 'totals_timer_counts', key, timerCounts[key]); }
    for (const key in gauges) { write(null, 'totals_gauges', key, gauges[key]); }
  });
  return true;
};
"""
#: How often a ``totals`` daemon flushes to its totals backend.
STATSD_TOTALS_FLUSH_INTERVAL_MS = 100


class StatsdTotals(NamedTuple):
    """What a ``totals`` daemon flushed since it started (see :data:`TOTALS_BACKEND_JS`).
    The daemon's own ``statsd.*`` keys are left out of ``gauges`` (its ``timestamp_lag``)."""

    counters: dict[str, float]
    timer_counts: dict[str, float]
    gauges: dict[str, float]
    flushes: int


def statsd_config(
    port: int, tcp_port: int, mgmt_port: int, udp_server: str = "./servers/udp"
) -> dict[str, Any]:
    """UDP on ``port`` (served by ``udp_server``) and TCP (``servers/tcp``: newline-terminated
    lines) on ``tcp_port``, the management console on ``mgmt_port``, all on 127.0.0.1; no
    flush during a test."""
    address = "127.0.0.1"
    return {
        "port": port,
        "address": address,
        "servers": [
            {
                "server": udp_server,
                "address": address,
                "port": port,
                "recvBufferSize": STATSD_UDP_RECEIVE_BUFFER,
            },
            {"server": "./servers/tcp", "address": address, "port": tcp_port},
        ],
        "mgmt_address": address,
        "mgmt_port": mgmt_port,
        "flushInterval": STATSD_FLUSH_INTERVAL_MS,
        "backends": ["./backends/console"],
        "deleteIdleStats": False,
        "automaticConfigReload": False,
    }


class StatsdDaemon:
    """A running Etsy StatsD daemon. Always ``stop()`` it (the fixtures do).

    ``port`` takes UDP datagrams, ``tcp_port`` TCP streams; ``mgmt_port`` is the management
    console that :func:`mgmt` talks to.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        port: int,
        tcp_port: int,
        mgmt_port: int,
        log_path: Path,
        config_path: Path,
    ) -> None:
        self.process = process
        self.port = port
        self.tcp_port = tcp_port
        self.mgmt_port = mgmt_port
        self.log_path = log_path
        self.config_path = config_path

    # -- reading ---------------------------------------------------------------------------

    def counters(self) -> dict[str, float]:
        result: dict[str, float] = mgmt(self, "counters")
        return result

    def gauges(self) -> dict[str, float]:
        result: dict[str, float] = mgmt(self, "gauges")
        return result

    def timers(self) -> dict[str, list[float]]:
        result: dict[str, list[float]] = mgmt(self, "timers")
        return result

    def health(self) -> str:
        result: str = mgmt(self, "health")
        return result

    @property
    def udp_receive_buffer(self) -> int:
        """The receive buffer (bytes) the daemon's UDP socket got, as its server logged."""
        match = UDP_BUFFER_LOG_RE.search(self.log_path.read_text(errors="replace"))
        if match is None:
            raise AssertionError(f"the UDP server did not log its buffer\n{self.diagnostics()}")
        return int(match.group(1))

    def udp_datagram_capacity(self) -> int:
        """How many datagrams the UDP socket's buffer holds while the daemon is not reading."""
        return self.udp_receive_buffer // UDP_DATAGRAM_BUFFER_COST

    @property
    def bad_lines_seen(self) -> int:
        """Lines the daemon could not parse since it started: ``messages.bad_lines_seen`` of
        ``stats``, the same count as the ``statsd.bad_lines_seen`` counter except that a
        flush never resets it."""
        return int(mgmt(self, "stats")["messages.bad_lines_seen"])

    def totals(self) -> StatsdTotals:
        """What this daemon flushed so far; only for one started with ``totals=True``.
        (Keys starting with ``last_`` would be mangled by the console: none are used.)"""
        groups: dict[str, dict[str, float]] = {
            "totals_counters": {},
            "totals_timer_counts": {},
            "totals_gauges": {},
        }
        flushes = -1
        for key, text in mgmt(self, "stats").items():
            group, _, name = key.partition(".")
            if key == "totals.flushes":
                flushes = int(text)
            elif group in groups and not (group == "totals_gauges" and name.startswith("statsd.")):
                groups[group][name] = float(text)
        if flushes < 0:
            raise AssertionError(f"not a totals daemon: no totals.flushes\n{self.diagnostics()}")
        return StatsdTotals(
            groups["totals_counters"],
            groups["totals_timer_counts"],
            groups["totals_gauges"],
            flushes,
        )

    def wait_for_totals(
        self, reached: Callable[[StatsdTotals], bool], timeout: float = STATSD_WAIT_SECS
    ) -> StatsdTotals:
        """Poll :meth:`totals` until ``reached(totals)`` holds and one more flush ran (so
        nothing still in flight is missed), or ``timeout`` passes: return the last answer."""
        totals = self.wait_until("totals", reached, timeout)
        settled = totals.flushes
        # Not reached in time: one more second, for the failure to show the latest totals.
        more = timeout if reached(totals) else 1.0
        return self.wait_until("totals", lambda later: later.flushes > settled + 1, more)

    @property
    def metrics_received(self) -> float:
        """``statsd.metrics_received``: lines received, valid or not."""
        return self.counters()[STATSD_METRICS]

    def user_counters(self) -> dict[str, float]:
        """The counters without the daemon's own ``statsd.*`` ones."""
        return {k: v for k, v in self.counters().items() if k not in STATSD_OWN_COUNTERS}

    def wait_until(
        self,
        command: str,
        predicate: Callable[[Any], bool],
        timeout: float = STATSD_WAIT_SECS,
    ) -> Any:
        """Poll ``mgmt(self, command)`` (``"totals"``: :meth:`totals`) until
        ``predicate(answer)`` holds, and return the answer.
        After ``timeout`` s the last answer is returned anyway: assert on it, so the failure
        shows what the daemon had (UDP is asynchronous; lost lines never arrive)."""
        answers: list[Any] = []

        def reached() -> bool:
            answers.append(self.totals() if command == "totals" else mgmt(self, command))
            if predicate(answers[-1]):
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"the StatsD daemon exited\n{self.diagnostics()}")
            return False

        eventually(reached, timeout, STATSD_POLL_SECS, fail=False)
        return answers[-1]

    def wait_for_key(self, command: str, key: str, timeout: float = STATSD_WAIT_SECS) -> Any:
        """Poll until ``key`` shows up in ``counters``/``gauges``/``timers``; return the
        whole answer. Fails, with the daemon's keys and log, if it never does."""
        answer = self.wait_until(command, lambda found: key in found, timeout)
        if key not in answer:
            raise AssertionError(
                f"{key!r} never showed up in the daemon's {command} after {timeout:g} s; "
                f"it has {sorted(answer)}\n{self.diagnostics()}"
            )
        return answer

    def wait_for(
        self, command: str, expected: Mapping[str, Any], timeout: float = STATSD_WAIT_SECS
    ) -> Any:
        """Poll until every ``expected`` key has its expected value (timer lists compared as
        multisets), then return the answer; after ``timeout`` s return the last answer."""

        def reached(answer: Mapping[str, Any]) -> bool:
            return all(
                key in answer and _same_value(answer[key], value) for key, value in expected.items()
            )

        return self.wait_until(command, reached, timeout)

    def wait_for_lines(self, count: float, timeout: float = STATSD_WAIT_SECS) -> dict[str, float]:
        """Poll until ``statsd.metrics_received`` reaches ``count``; return the counters."""
        counters: dict[str, float] = self.wait_until(
            "counters", lambda found: found[STATSD_METRICS] >= count, timeout
        )
        return counters

    # -- diagnostics -----------------------------------------------------------------------

    def udp_drops(self) -> int | None:
        """Datagrams the kernel dropped for the daemon's UDP socket (its receive buffer was
        full), from /proc/net/udp; None where that file does not exist."""
        return udp_socket_drops(self.port)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def diagnostics(self) -> str:
        return (
            f"statsd daemon udp={self.port} tcp={self.tcp_port} mgmt={self.mgmt_port} "
            f"(exit code {self.process.poll()}), kernel UDP drops: {self.udp_drops()}\n"
            f"statsd log ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        stop_process(self.process)

    def __repr__(self) -> str:
        return (
            f"<StatsdDaemon udp={self.port} tcp={self.tcp_port} mgmt={self.mgmt_port} "
            f"pid={self.process.pid}>"
        )


def _same_value(found: Any, expected: Any) -> bool:
    if isinstance(expected, (list, tuple)):
        return isinstance(found, list) and sorted(found) == sorted(expected)
    return bool(found == expected)


def start_statsd_daemon(
    workdir: Path,
    *,
    node: str | None = None,
    stats_js: Path | None = None,
    attempts: int = 3,
    totals: bool = False,
) -> StatsdDaemon:
    """Start the Etsy StatsD daemon on free loopback ports and wait until its management
    console answers ``health`` and its UDP socket is bound. Files (config, log) go in
    ``workdir``. Without ``node``/``stats_js`` it finds them, skipping the test (failing it
    under REQUIRE_REAL_SINKS=1) when they are missing. Retries on other ports if one was
    taken in the meantime. ``totals=True``: the daemon flushes every
    ``STATSD_TOTALS_FLUSH_INTERVAL_MS`` to the totals backend only (read with
    :meth:`StatsdDaemon.totals`), so its ``counters`` and ``timers`` answers are emptied at
    every flush."""
    if node is None or stats_js is None:
        node, stats_js = require_statsd()
    package_dir = stats_js.parent
    udp_server = workdir / "udp_server.js"
    udp_server.write_text(UDP_SERVER_JS)
    for attempt in range(1, attempts + 1):
        port, tcp_port, mgmt_port = free_udp_port(), free_port(), free_port()
        if tcp_port == mgmt_port:
            continue
        config_path = workdir / f"statsd-{attempt}.js"
        config = statsd_config(port, tcp_port, mgmt_port, udp_server=str(udp_server))
        if totals:
            totals_js = workdir / "totals_backend.js"
            totals_js.write_text(TOTALS_BACKEND_JS)
            config["backends"] = [str(totals_js)]
            config["flushInterval"] = STATSD_TOTALS_FLUSH_INTERVAL_MS
        # JSON is a JavaScript object literal: the daemon evals the file.
        config_path.write_text(json.dumps(config, indent=2))
        log_path = workdir / f"statsd-{attempt}.log"
        command = [node, str(stats_js), str(config_path)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=package_dir,  # the config names backends and servers relative to it
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        daemon = StatsdDaemon(
            process,
            port=port,
            tcp_port=tcp_port,
            mgmt_port=mgmt_port,
            log_path=log_path,
            config_path=config_path,
        )

        failure = (
            f"the StatsD daemon did not become ready; command: {' '.join(command)} "
            f"(cwd {package_dir})\nconfig:\n{config_path.read_text()}"
        )
        if _started(daemon, _wait_statsd_ready, "EADDRINUSE", attempt == attempts, failure):
            return daemon
    raise AssertionError("could not pick distinct free ports")  # pragma: no cover


def _wait_statsd_ready(daemon: StatsdDaemon, timeout: float = STATSD_READY_TIMEOUT_SECS) -> bool:
    """True once the console answers ``health: up`` and the UDP socket is bound; False if the
    process exits or ``timeout`` passes."""

    def settled() -> str:
        if daemon.process.poll() is not None:
            return "exited"
        try:
            healthy = mgmt(daemon, "health", timeout=1.0) == "up"
        except OSError:
            healthy = False
        # The UDP socket is bound asynchronously too: its server logs when it is.
        log = daemon.log_path.read_text(errors="replace")
        return "ready" if healthy and UDP_BUFFER_LOG_RE.search(log) else ""

    return eventually(settled, timeout, 0.02, fail=False) == "ready"


_PROC_NET_UDP = Path("/proc/net/udp")


def udp_socket_drops(port: int, host: str = "127.0.0.1") -> int | None:
    """The ``drops`` column of /proc/net/udp for the socket bound to ``host:port``, or None
    when there is no such socket (or no /proc)."""
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    try:
        rows = _PROC_NET_UDP.read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        if len(fields) >= 13 and fields[1] == local:
            return int(fields[-1])
    return None


def mgmt(daemon: StatsdDaemon, command: str, timeout: float = 5.0) -> Any:
    """Send a management command to the daemon and parse the answer.

    - ``counters`` / ``gauges``: ``{key: number}``; ``timers``: ``{key: [ms, ...]}`` (the
      daemon prints them with Node's util.inspect, parsed by :func:`parse_inspected`);
    - ``health``: ``"up"`` or ``"down"``;
    - ``stats``: ``{"messages.bad_lines_seen": "0", ...}`` (text values).
    """
    text = mgmt_raw(daemon.host, daemon.mgmt_port, command, timeout)
    if command in ("counters", "gauges", "timers"):
        return parse_inspected(text.removesuffix("END\n\n"))
    if command.startswith("health"):
        label, _, status = text.strip().partition(": ")
        if label != "health":
            raise AssertionError(f"unexpected answer to {command!r}: {text!r}")
        return status
    if command == "stats":
        pairs = (line.partition(": ") for line in text.splitlines() if ": " in line)
        return {key: value for key, _, value in pairs}
    return text


def mgmt_raw(host: str, port: int, command: str, timeout: float = 5.0) -> str:
    """The text the management console answers to ``command`` (one connection each)."""
    # health answers one line; the listing commands end with "END" and a blank line.
    terminator = b"\n" if command.startswith("health") else b"END\n\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(terminator):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.endswith(terminator):
        raise AssertionError(f"truncated answer to {command!r}: {data!r}")
    return data.decode()


# util.inspect output: {} objects whose keys are identifiers or quoted strings, numbers
# (also -0, 1e+21, NaN, Infinity) and arrays. Enough for what the daemon prints.
_INSPECT_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`)
      | (?P<more>\.\.\.\ \d+\ more\ items?)
      | (?P<number>[-+]?(?:Infinity|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))
      | (?P<name>[A-Za-z_$][\w$]*)
      | (?P<punct>[{}\[\]:,])
    )""",
    re.VERBOSE,
)
_JS_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def parse_inspected(text: str) -> Any:
    """Parse what Node's ``util.inspect`` prints for an object of numbers or of arrays of
    numbers (the daemon's ``counters``, ``gauges`` and ``timers``). Anything else, and an
    array util.inspect cut short (``... N more items``), raises ValueError."""
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _INSPECT_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot parse util.inspect output at {position}: {text!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind == "more":
            raise ValueError(
                f"util.inspect cut an array short ({match.group(kind)!r}): it prints at most "
                f"{INSPECT_MAX_ARRAY_LENGTH} items, so keep fewer values per timer key"
            )
        tokens.append((kind, match.group(kind)))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    value, end = _parse_value(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing text after the value: {text!r}")
    return value


def _parse_value(tokens: list[tuple[str, str]], index: int) -> tuple[Any, int]:
    if index >= len(tokens):
        raise ValueError("unexpected end of util.inspect output")
    kind, token = tokens[index]
    if kind == "number":
        return float(token.replace("Infinity", "inf")), index + 1
    if kind == "string":
        return _unquote(token), index + 1
    if token in ("{", "["):
        closing = "}" if token == "{" else "]"
        items: list[Any] = []
        pairs: dict[str, Any] = {}
        index += 1
        while tokens[index][1] != closing:
            if token == "{":
                key_kind, key = tokens[index]
                if key_kind not in ("name", "string", "number") or tokens[index + 1][1] != ":":
                    raise ValueError(f"expected 'key:' in util.inspect output, got {key!r}")
                pairs[_unquote(key) if key_kind == "string" else key], index = _parse_value(
                    tokens, index + 2
                )
            else:
                item, index = _parse_value(tokens, index)
                items.append(item)
            if tokens[index][1] == ",":
                index += 1
            elif tokens[index][1] != closing:
                raise ValueError(f"expected ',' or {closing!r}, got {tokens[index][1]!r}")
        return (pairs if token == "{" else items), index + 1
    raise ValueError(f"unexpected token {token!r} in util.inspect output")


def _unquote(token: str) -> str:
    body, out, index = token[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            index += 1
            char = _JS_ESCAPES.get(body[index], body[index])
        out.append(char)
        index += 1
    return "".join(out)


# -- the MCP reference server and the proxy under test ---------------------------------------

#: Where scripts/install-test-deps installs @modelcontextprotocol/server-everything with npm.
MCP_SERVER_EVERYTHING = Path("node_modules") / ".bin" / "mcp-server-everything"
#: The line ``metricsfacade proxy`` logs on stderr once its endpoint serves.
PROXY_METRICS_URL_RE = re.compile(r"metricsfacade proxy: metrics at (http://\S+)")
PROXY_START_TIMEOUT_SECS = 20.0


def sinks_dir() -> Path:
    """``$TEST_SINKS_DIR``, else the default install directory of the npm packages."""
    base = os.environ.get(SINKS_DIR_ENV, "").strip()
    return Path(base) if base else DEFAULT_SINKS_DIR


def require_mcp_server_everything() -> list[str]:
    """The command running ``mcp-server-everything`` on stdio; skip the test if it is not
    installed (fail under REQUIRE_REAL_SINKS=1)."""
    path = sinks_dir() / MCP_SERVER_EVERYTHING
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(
            f"the MCP reference server is not installed ({path} is not an executable): run "
            f"scripts/install-test-deps (it installs @modelcontextprotocol/server-everything "
            f"with npm under ${SINKS_DIR_ENV}, default {DEFAULT_SINKS_DIR})"
        )
    require_tool("node")  # the script's interpreter (#!/usr/bin/env node)
    return [str(path), "stdio"]


def proxy_command(
    server: list[str], *, tape: Path | None = None, config: Path | None = None
) -> list[str]:
    """``python -m metricsfacade proxy`` on a free metrics port in front of ``server``."""
    command = [sys.executable, "-m", "metricsfacade", "proxy", "--metrics-port", "0"]
    if config is not None:
        command += ["--config", str(config)]
    if tape is not None:
        command += ["--tape", str(tape)]
    return [*command, "--", *server]


class StderrLog:
    """Drains a child process's stderr on a thread (so the child never blocks on a full pipe),
    keeps its lines, and finds the proxy's metrics URL in them."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._url: str | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="stderr-log", daemon=True)
        self._thread.start()

    @classmethod
    def pipe(cls) -> tuple[StderrLog, Any]:
        """A log reading a new pipe, and the pipe's write end as a text file to give a child
        as its stderr. Close the write end once the child is started (or gone)."""
        read_fd, write_fd = os.pipe()
        return cls(os.fdopen(read_fd, "rb")), os.fdopen(write_fd, "w")

    def _read(self) -> None:
        try:
            for raw in self._stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._changed:
                    self._lines.append(line)
                    match = PROXY_METRICS_URL_RE.search(line)
                    if match and self._url is None:
                        self._url = match.group(1)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            self._stream.close()

    def metrics_url(self, timeout: float = PROXY_START_TIMEOUT_SECS) -> str:
        """The proxy's /metrics URL, once it logged it; fails with the log if it does not."""
        with self._changed:
            self._changed.wait_for(lambda: self._url is not None or self._closed, timeout)
            if self._url is None:
                raise AssertionError(
                    f"the proxy did not log its metrics URL within {timeout:g} s; "
                    f"stderr:\n{self.text()}"
                )
            return self._url

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """Wait until every writer of the pipe is gone (the processes exited)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._closed, timeout)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self._lines) or "(empty)"


# -- a plain UDP socket as a (Dog)StatsD agent --------------------------------------------------


class UdpLineSink:
    """A UDP socket on 127.0.0.1 that keeps every datagram (with its source address), read
    by a thread of its own; :meth:`lines` parses them with the strict parser
    (``strict_statsd``), so a malformed line fails the test. Asks for an 8 MB receive buffer
    (capped by ``net.core.rmem_max``); :meth:`drops` tells whether the kernel dropped any.
    Always ``close()`` it."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STATSD_UDP_RECEIVE_BUFFER)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.host = "127.0.0.1"
        self.port = int(self.sock.getsockname()[1])
        self._datagrams: list[tuple[bytes, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="udp-line-sink", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._datagrams.append(received)

    def datagrams(self) -> list[tuple[bytes, Any]]:
        """``(payload, source address)`` of every datagram so far, in arrival order."""
        with self._lock:
            return list(self._datagrams)

    def lines(self) -> list[Any]:
        """Every line so far (``strict_statsd.Line``), in arrival order."""
        return [line for data, _ in self.datagrams() for line in strict_statsd.parse_datagram(data)]

    def wait(
        self,
        predicate: Callable[[list[Any]], bool],
        timeout: float = STATSD_WAIT_SECS,
        settle: float = 0.1,
    ) -> list[Any]:
        """Poll until ``predicate(self.lines())`` holds, then read for another ``settle`` s
        (so strays and duplicates show); after ``timeout`` s return the lines anyway."""
        eventually(lambda: predicate(self.lines()), timeout, STATSD_POLL_SECS, fail=False)
        # Datagrams that should NOT come (strays, duplicates) have no event to wait for: a
        # short quiet period is the only way to see them.
        time.sleep(settle)
        return self.lines()

    def drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (see :func:`udp_socket_drops`)."""
        return udp_socket_drops(self.port)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


#: What DogStatsd reads from the environment (destination, tags, origin fields): tests clear
#: them so the host's environment cannot leak into what is sent.
DD_VARIABLES = (
    "DATADOG_TAGS",
    "DD_AGENT_HOST",
    "DD_DOGSTATSD_DISABLE",
    "DD_DOGSTATSD_PORT",
    "DD_DOGSTATSD_URL",
    "DD_ENTITY_ID",
    "DD_ENV",
    "DD_EXTERNAL_ENV",
    "DD_ORIGIN_DETECTION_ENABLED",
    "DD_SERVICE",
    "DD_TAGS",
    "DD_TELEMETRY_HOST",
    "DD_TELEMETRY_PORT",
    "DD_VERSION",
)


def run_in_child(body: Callable[[], int]) -> int:
    """Fork; the child runs ``body`` and leaves with its return code via os._exit."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 70
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
