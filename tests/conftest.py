"""Fixtures for tests against real external sinks (see sinks.py). Only fixtures: no hooks.

- ``prometheus_bin`` / ``promtool_bin``: the executables' paths. Missing ones skip the test,
  or fail it when ``REQUIRE_REAL_SINKS=1`` (CI sets it).
- ``start_prometheus`` (per test) / ``start_prometheus_module`` (per module): factories.
  Call ``start({"job": "http://127.0.0.1:PORT/metrics"})`` once the endpoints to scrape
  exist; it returns a ready :class:`sinks.PrometheusServer`, stopped at teardown.
- ``statsd_install``: ``(node, stats.js)`` of the Etsy StatsD daemon; missing ones skip the
  test, or fail it under ``REQUIRE_REAL_SINKS=1`` (run scripts/install-test-deps).
- ``statsd_daemon`` (per test): a fresh, ready :class:`sinks.StatsdDaemon` (UDP ``port``,
  TCP ``tcp_port``, management ``mgmt_port``), stopped at teardown. A daemon starts in
  0.2-0.4 s, so every test gets its own and no test sees another's counters or bad lines.
  Its UDP socket asks for an 8 MB receive buffer (see ``sinks.UDP_SERVER_JS``: the stock
  one drops most of a burst of datagrams); it never flushes during a test.
- ``start_statsd`` (per test): a factory, ``start_statsd()``, for tests needing several.
- ``mcp_server_everything``: the command (a list) running the MCP reference server on stdio;
  a missing install skips the test, or fails it under ``REQUIRE_REAL_SINKS=1``.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sinks

StartPrometheus = Callable[[Mapping[str, str]], sinks.PrometheusServer]
StartStatsd = Callable[[], sinks.StatsdDaemon]


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return sinks.require_tool("prometheus")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return sinks.require_tool("promtool")


def _prometheus_factory(
    binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPrometheus]:
    servers: list[sinks.PrometheusServer] = []

    def start(targets: Mapping[str, str]) -> sinks.PrometheusServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        server = sinks.start_prometheus(binary, workdir, targets)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def start_prometheus(
    prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPrometheus]:
    """Start Prometheus servers that live until the end of the test."""
    yield from _prometheus_factory(prometheus_bin, tmp_path_factory)


@pytest.fixture(scope="module")
def start_prometheus_module(
    prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPrometheus]:
    """Start Prometheus servers that live until the end of the test module."""
    yield from _prometheus_factory(prometheus_bin, tmp_path_factory)


@pytest.fixture(scope="session")
def statsd_install() -> tuple[str, Path]:
    return sinks.require_statsd()


@pytest.fixture
def start_statsd(
    statsd_install: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartStatsd]:
    """Start StatsD daemons that live until the end of the test."""
    node, stats_js = statsd_install
    daemons: list[sinks.StatsdDaemon] = []

    def start() -> sinks.StatsdDaemon:
        workdir = tmp_path_factory.mktemp("statsd")
        daemon = sinks.start_statsd_daemon(workdir, node=node, stats_js=stats_js)
        daemons.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


@pytest.fixture
def statsd_daemon(start_statsd: StartStatsd) -> sinks.StatsdDaemon:
    """A fresh StatsD daemon for this test."""
    return start_statsd()


@pytest.fixture(scope="session")
def mcp_server_everything() -> list[str]:
    """``[.../mcp-server-everything, "stdio"]`` (see ``sinks.require_mcp_server_everything``)."""
    return sinks.require_mcp_server_everything()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (openssl is installed with the
    test dependencies)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = shlex.split(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
        "-addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run([*command, "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key
