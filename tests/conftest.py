"""Fixtures for tests against real external sinks (see sinks.py). Only fixtures: no hooks.

- ``prometheus_bin`` / ``promtool_bin``: the executables' paths. Missing ones skip the test,
  or fail it when ``REQUIRE_REAL_SINKS=1`` (CI sets it).
- ``start_prometheus`` (per test) / ``start_prometheus_module`` (per module): factories.
  Call ``start({"job": "http://127.0.0.1:PORT/metrics"})`` once the endpoints to scrape
  exist; it returns a ready :class:`sinks.PrometheusServer`, stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
import sinks

StartPrometheus = Callable[[Mapping[str, str]], sinks.PrometheusServer]


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
