"""Wiring for the ``proxy`` command: config, facade, catalog, collector, readiness, proxy."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import BinaryIO

import attrs

import metricsfacade as mf
from metricsfacade.config import ConfigSource, load_config
from metricsfacade.errors import MissingExtraError
from metricsfacade.proxy.core import StdioProxy
from metricsfacade.proxy.tape import TapeRecorder
from metricsfacade.shadowcat import ShadowcatMetrics, SystemCollector

logger = logging.getLogger("metricsfacade.proxy")


def run_proxy(
    command: Sequence[str],
    config: ConfigSource = None,
    *,
    metrics_port: int | None = None,
    tape_path: str | None = None,
    client_in: BinaryIO | None = None,
    client_out: BinaryIO | None = None,
) -> int:
    """Run the proxy until the client hangs up; returns the process exit status."""
    settings = load_config(config)
    if metrics_port is not None:
        settings = attrs.evolve(settings, port=metrics_port)
    facade = mf.configure(settings, environ={})
    try:
        shadowcat = ShadowcatMetrics(facade)
        try:
            SystemCollector(facade)
        except MissingExtraError:
            logger.info("metricsfacade proxy: psutil missing; no system metrics")
        tape = TapeRecorder(tape_path, shadowcat) if tape_path else None
        proxy = StdioProxy(
            command,
            settings.proxy,
            shadowcat,
            client_in or sys.stdin.buffer,
            client_out or sys.stdout.buffer,
            tape=tape,
        )
        facade.add_readiness_check("upstream", lambda: proxy.ready)
        if facade.endpoint_url:
            logger.info("metricsfacade proxy: metrics at %s%s", facade.endpoint_url, settings.path)
        return proxy.run()
    finally:
        facade.remove_readiness_check("upstream")
        facade.close()
