"""The fixtures every test folder shares (helpers live in the ``support`` package next to
this file). Only fixtures: no hooks.

Facades:

- ``make_facade``: a factory, ``make_facade(**settings)``: a facade with only the memory
  backend and no HTTP endpoint (``settings`` override that), ignoring ``METRICSFACADE_*``
  variables; every facade it made is closed at teardown (closing one earlier is fine).
- ``facade``: ``make_facade()``; ``mock``: a :class:`~metricsfacade.testing.MetricsMock`
  on it.
- ``serve_facade``: the same factory with the Prometheus backend serving on a free loopback
  port (``port=0``).

Sockets and the environment:

- ``children_import_this_checkout`` (per session, automatic): ``PYTHONPATH`` starts with the
  repository, so child processes import the package under test wherever pytest runs from.
- ``udp_sink``: a :class:`support.sinks.UdpLineSink`, a UDP socket that keeps every datagram
  and parses its lines strictly; ``udp_receiver``: a bare bound UDP socket. Both closed at
  teardown.
- ``no_datadog_environment``: clears the ``DD_*`` variables DogStatsd reads (where the agent
  is, extra tags, origin detection), so the host's environment cannot leak into what is sent.
- ``certificate`` (per session): a self-signed certificate and key for 127.0.0.1.

Real sinks (see ``support/sinks.py``):

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

import functools
import os
import shlex
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import support
from support import sinks

import metricsfacade as mf
from metricsfacade.testing import MetricsMock

StartPrometheus = Callable[[Mapping[str, str]], sinks.PrometheusServer]
StartStatsd = Callable[[], sinks.StatsdDaemon]
MakeFacade = Callable[..., mf.Metrics]


@pytest.fixture(autouse=True, scope="session")
def children_import_this_checkout() -> Iterator[None]:
    """Child processes (``python -m metricsfacade ...``) import the package under test from
    this checkout, whatever the current directory is."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(support.REPO), previous]))
    yield
    if previous is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = previous


# -- facades -----------------------------------------------------------------------------------


@pytest.fixture
def make_facade() -> Iterator[MakeFacade]:
    """Build facades (memory backend, no endpoint, environment ignored; ``settings``
    override); all are closed at teardown."""
    made: list[mf.Metrics] = []

    def make(**settings: Any) -> mf.Metrics:
        metrics = mf.Metrics({"port": None, "backends": ["memory"], **settings}, environ={})
        made.append(metrics)
        return metrics

    yield make
    for metrics in reversed(made):
        metrics.close()


@pytest.fixture
def facade(make_facade: MakeFacade) -> mf.Metrics:
    """A facade with only the memory backend, closed at teardown."""
    return make_facade()


@pytest.fixture
def mock(facade: mf.Metrics) -> Iterator[MetricsMock]:
    """A MetricsMock on ``facade``."""
    with MetricsMock(facade) as metrics_mock:
        yield metrics_mock


@pytest.fixture
def serve_facade(make_facade: MakeFacade) -> MakeFacade:
    """Build facades with the Prometheus backend serving on a free loopback port."""
    return functools.partial(make_facade, port=0, backends=["prometheus"])


# -- sockets and the environment ---------------------------------------------------------------


@pytest.fixture
def udp_sink() -> Iterator[sinks.UdpLineSink]:
    sink = sinks.UdpLineSink()
    yield sink
    sink.close()


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    """A bare UDP socket on 127.0.0.1, for tests that read datagrams as they come."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def no_datadog_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """DogStatsd reads where the agent is and extra tags from DD_* variables: none here."""
    for name in sinks.DD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# -- real sinks --------------------------------------------------------------------------------


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
