"""The system collector: memory, CPU, units of work, threads, fds, uptime.

Values are real measurements from psutil: CPU percent is the process's CPU time over the
time since the previous collection (never a stub 0). Collection runs just before every
Prometheus scrape, so pulled values are never stale, and every ``collection_interval_secs``
on a thread of its own when a push backend is configured, or Prometheus with a
``multiprocess_dir`` (a scrape in another worker does not run this process's collection;
the catalog says how each gauge merges over workers). It never touches the event loop:
asyncio tasks are counted from the collector's thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable

from metricsfacade import get_metrics
from metricsfacade.backends import needs_background_collection
from metricsfacade.config import MetricsConfig
from metricsfacade.errors import MissingExtraError
from metricsfacade.facade import Metrics
from metricsfacade.handles import Gauge
from metricsfacade.shadowcat.catalog import CATALOG
from metricsfacade.shadowcat.metrics import declare, typed_handle

try:
    import psutil
except ModuleNotFoundError:  # pragma: no cover - exercised without the extra only
    psutil = None  # type: ignore[assignment]

logger = logging.getLogger("metricsfacade.system")
SYSTEM_METRICS = (
    "shadowcat_memory_usage_bytes",
    "shadowcat_cpu_usage_percent",
    "shadowcat_goroutines",
    "shadowcat_threads",
    "shadowcat_open_fds",
    "shadowcat_uptime_seconds",
)


class SystemCollector:
    """Collects process metrics into a facade (the global one by default) while it runs.

    ``shadowcat_goroutines`` counts the concurrent units of work. ``loop``: the asyncio loop
    whose tasks it counts; by default the loop running where the collector is created.
    Created outside a loop (before ``asyncio.run``), call
    ``watch_loop(asyncio.get_running_loop())`` once inside it; code without asyncio (a
    threaded proxy) says what it counts with ``watch_work``. Until then it is not collected.
    """

    def __init__(
        self, facade: Metrics | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if psutil is None:
            raise MissingExtraError("system collector", "psutil", "system")
        facade = facade if facade is not None else get_metrics()
        entries = {entry.name: entry for entry in CATALOG}
        gauges = {name: declare(facade, entries[name]) for name in SYSTEM_METRICS}
        self._memory = typed_handle(gauges, "shadowcat_memory_usage_bytes", Gauge)
        self._cpu = typed_handle(gauges, "shadowcat_cpu_usage_percent", Gauge)
        self._tasks = typed_handle(gauges, "shadowcat_goroutines", Gauge)
        self._threads = typed_handle(gauges, "shadowcat_threads", Gauge)
        self._fds = typed_handle(gauges, "shadowcat_open_fds", Gauge)
        self._uptime = typed_handle(gauges, "shadowcat_uptime_seconds", Gauge)
        loop = loop if loop is not None else _running_loop()
        self._units: Callable[[], int | None] | None = None
        if loop is not None:
            self.watch_loop(loop)
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process.cpu_percent(None)  # the first reading covers the time since now
        facade.add_collect_hook(self.collect)
        facade.add_service(self)

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the tasks of this loop from now on."""
        self._units = functools.partial(_task_count, loop)

    def watch_work(self, count: Callable[[], int]) -> None:
        """Count what ``count()`` says from now on: the units of work in flight of code that
        runs without asyncio (called from the collecting thread: it must be thread-safe)."""
        self._units = count

    def collect(self) -> None:
        """Read every value now and set the gauges."""
        with self._lock:  # psutil's CPU reading compares with the previous call
            process = self._process
            with process.oneshot():
                self._memory.set(process.memory_info().rss)
                self._cpu.set(process.cpu_percent(None))
                self._threads.set(process.num_threads())
                if hasattr(process, "num_fds"):
                    self._fds.set(process.num_fds())
                self._uptime.set(max(0.0, time.time() - process.create_time()))
            units = self._units() if self._units is not None else None
            if units is not None:
                self._tasks.set(units)

    # -- the facade runs it as a service -------------------------------------------------

    def start(self, config: MetricsConfig) -> None:
        self.stop()
        if not needs_background_collection(config):
            return  # collected at scrape time only
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(config.collection_interval_secs,),
            name="metricsfacade-system-collector",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.collect()
            except Exception:
                logger.exception("metricsfacade: collecting system metrics failed")
            self._stop.wait(interval)


def _task_count(loop: asyncio.AbstractEventLoop) -> int | None:
    """The tasks of ``loop``; None once it is closed (the last count stays)."""
    return None if loop.is_closed() else len(asyncio.all_tasks(loop))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
