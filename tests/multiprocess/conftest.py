"""Fixtures of the multi-process tests (helpers: ``support.servers`` and ``mp_checks``).

- ``serve`` (per test): a factory, ``serve(setup, config)``: starts the app of ``setup``
  (a :class:`support.servers.Setup`) in a real server, waits until every worker serves,
  and returns a :class:`mp_checks.Service`; every server is stopped at teardown, with any
  worker its master left behind.

- ``start_prometheus_fast`` (per test): a factory, ``start(targets)``: a real Prometheus
  server scraping ``{job: url}`` every 0.5 s (``support.sinks.start_prometheus``), ready,
  stopped at teardown.

``config`` says how the app finds its multi-process directory (see ``apps/mp_common.py``):
``"dict"`` (the config dict), ``"env"`` (``METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR``: in
gunicorn's ``raw_env``, or uvicorn's environment) or ``"single"`` (none: one process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

import pytest
from mp_checks import APPS, Service
from support import clean_environ, servers, sinks

ENV_VARIABLE = "METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR"

Serve = Callable[..., Service]


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    started: list[servers.Server] = []

    def start(setup: servers.Setup, config: str) -> Service:
        directory = tmp_path_factory.mktemp(setup.name)
        # Not created here: the facade creates it.
        metrics_dir = directory / "metrics" / "shared"
        pythonpath = os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")]))
        imports_log = directory / "imports.log"
        env = clean_environ(
            MP_CONFIG=config, PYTHONPATH=pythonpath, MP_IMPORTS_LOG=str(imports_log)
        )
        raw_env: dict[str, str] = {}
        if config == "dict":
            env["MP_DIR"] = str(metrics_dir)
        elif config == "env" and setup.server == "gunicorn":
            raw_env[ENV_VARIABLE] = str(metrics_dir)
        elif config == "env":
            env[ENV_VARIABLE] = str(metrics_dir)
        server = servers.launch(setup, directory, env, raw_env)
        started.append(server)
        server.wait_serving("/pid")
        server.wait_workers(setup.workers)
        return Service(setup, server, metrics_dir, imports_log, master_records=setup.preload)

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def start_prometheus_fast(
    prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Mapping[str, str]], sinks.PrometheusServer]]:
    started: list[sinks.PrometheusServer] = []

    def start(targets: Mapping[str, str]) -> sinks.PrometheusServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        server = sinks.start_prometheus(prometheus_bin, workdir, targets, scrape_interval="500ms")
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
