"""Wiring for the ``proxy`` command: config, facade, catalog, collector, readiness, proxy,
and the stop signals."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import BinaryIO

import attrs

import metricsfacade as mf
from metricsfacade.config import ConfigSource, load_config
from metricsfacade.errors import MissingExtraError
from metricsfacade.facade import Metrics
from metricsfacade.proxy.core import StdioProxy
from metricsfacade.proxy.tape import TapeRecorder
from metricsfacade.shadowcat import ShadowcatMetrics, SystemCollector

logger = logging.getLogger("metricsfacade.proxy")
#: The signals that end the proxy cleanly (a service manager's, Ctrl-C's, a closed terminal's).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
        tape = TapeRecorder(tape_path, shadowcat) if tape_path else None
        proxy = StdioProxy(
            command,
            settings.table("proxy"),
            shadowcat,
            client_in or sys.stdin.buffer,
            client_out or sys.stdout.buffer,
            tape=tape,
        )
        _collect_system_metrics(facade, proxy)
        facade.add_readiness_check("upstream", lambda: proxy.ready)
        if facade.endpoint_url:
            logger.info("metricsfacade proxy: metrics at %s%s", facade.endpoint_url, settings.path)
        with _stopped_by_signals(proxy):
            return proxy.run()
    finally:
        facade.remove_readiness_check("upstream")
        facade.close()


def _collect_system_metrics(facade: Metrics, proxy: StdioProxy) -> None:
    """The process metrics. The proxy relays on one thread, without asyncio: its units of
    work (``shadowcat_goroutines``) are the requests in flight."""
    try:
        collector = SystemCollector(facade)
    except MissingExtraError:
        logger.info("metricsfacade proxy: psutil missing; no system metrics")
        return
    collector.watch_work(lambda: proxy.in_flight)


@contextlib.contextmanager
def _stopped_by_signals(proxy: StdioProxy) -> Iterator[None]:
    """While the proxy runs, each stop signal stops it cleanly (exit status 128 + its number); the
    previous handlers come back after. A signal ignored when we start (``nohup``) stays
    ignored; outside the main thread, where Python runs no handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    previous = {  # None: handled outside Python, which we could not put back
        signum: handler
        for signum, handler in previous.items()
        if handler is not None and handler is not signal.SIG_IGN
    }

    def stop(signum: int, frame: FrameType | None) -> None:
        proxy.stop(signum)

    for signum in previous:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
