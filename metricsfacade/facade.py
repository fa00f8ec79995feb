"""``Metrics``: the facade applications hold. It puts the parts together and runs the
lifecycle: configure, re-configure, flush, close, fork and interpreter exit.

The parts: :class:`~metricsfacade.declarations.Declarations` (the metrics, by name),
:class:`~metricsfacade.binder.SeriesBinder` (label sets to cells of the series store, and the
cardinality budget), :class:`~metricsfacade.drops.DropAccounting` (what recording could not
take) and the backends, which read the store. Handles outlive configuration: metrics declared
before ``configure()`` (at module level, as libraries do) are bound when it runs, and re-bound
if it runs again. The store outlives configuration too, so a re-configure keeps every value.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from metricsfacade import forking, shutdown
from metricsfacade.backends import create_backends
from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.backends.flusher import PushFlusher
from metricsfacade.binder import OVERFLOW_LABEL_VALUE, SeriesBinder
from metricsfacade.config import ConfigSource, MetricsConfig, load_config
from metricsfacade.declarations import HANDLE_TYPES, Declarations, check_common_labels
from metricsfacade.drops import DropAccounting
from metricsfacade.endpoint import Endpoint
from metricsfacade.handles import Counter, Gauge, Histogram, MetricHandle, Timer
from metricsfacade.readiness import ReadinessCheck, ReadinessChecks
from metricsfacade.spec import DEFAULT_BUCKETS, Kind, MetricSpec, make_spec
from metricsfacade.store import SeriesStore

logger = logging.getLogger("metricsfacade")

__all__ = ["OVERFLOW_LABEL_VALUE", "Metrics", "Service"]

#: How long close() may spend sending what push backends have left (plus one send's timeout).
CLOSE_TIMEOUT_SECS = 5.0


class Metrics:
    """A metrics facade. ``Metrics(config)`` configures it at once; ``Metrics()`` does not.

    Until configured (and after ``close()``) every recording is a silent no-op.
    """

    def __init__(
        self, config: ConfigSource = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._drops = DropAccounting()
        self._binder = SeriesBinder(self._lock, self._drops)
        self._declarations = Declarations(self._lock, self._binder, self._drops)
        self._drops.declare_counters(self._own_counter)
        self._config: MetricsConfig | None = None
        self._backends: tuple[Backend, ...] = ()
        self._flusher: PushFlusher | None = None
        self._endpoint: Endpoint | None = None
        self._readiness = ReadinessChecks()
        self._exit_hook_registered = False
        self._services: list[Service] = []
        self._collect_hooks: list[Callable[[], None]] = []
        forking.LOCKS.add(self)
        if config is not None:
            self.configure(config, environ=environ)

    # -- configuration ---------------------------------------------------------------------

    def configure(
        self, source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
    ) -> Metrics:
        """(Re)configure from a dict, a MetricsConfig, a TOML path, or defaults plus env.

        Builds the new backends, sends what the previous push backends have left and closes
        them, then binds every declared metric to the new setup. Values recorded so far are
        kept. Raises ConfigError or MissingExtraError (the old setup keeps running), or
        EndpointError (the facade is left unconfigured).
        """
        config = load_config(source, environ=environ)
        with self._lock:
            for handle in self._declarations:
                check_common_labels(handle.spec, config.common_labels)
            for custom in config.custom_metrics:
                spec = make_spec(
                    custom.name, custom.help, Kind(custom.kind), custom.labels, custom.buckets
                )
                check_common_labels(spec, config.common_labels)
                self.declare(spec)
            # Built before the old ones close, so a failure here leaves the old setup serving.
            backends = tuple(create_backends(config)) if config.enabled else ()
            retired, retired_flusher = self._detach()
            self._config = config
            self._backends = backends
            self._declarations.common_labels = config.common_labels
            self._drops.strict = config.strict
            self._binder.limit = config.cardinality_limit
            self._attach(backends, config)
        _retire(retired, retired_flusher)
        pushing = [backend for backend in backends if isinstance(backend, PushBackend)]
        try:
            with self._lock:
                if pushing and self._config is config:
                    self._flusher = PushFlusher(
                        self._binder.store, pushing, fresh=retired_flusher is None
                    )
                if config.enabled and config.port is not None:
                    self._endpoint = self._start_endpoint(config)
        except BaseException:
            self._unconfigure()  # outside the lock: it waits for the flusher thread
            raise
        self._restart_services()
        self._register_exit_hook()
        shutdown.watch(self)
        return self

    @property
    def config(self) -> MetricsConfig | None:
        """The config in force, or None while unconfigured."""
        return self._config

    @property
    def endpoint_url(self) -> str | None:
        """Base URL of the HTTP endpoint (e.g. ``http://127.0.0.1:9090``), if one is serving."""
        return self._endpoint.url if self._endpoint else None

    def backend(self, name: str) -> Backend:
        """The configured backend called ``name`` (e.g. to query the ``memory`` backend)."""
        for backend in self._backends:
            if backend.name == name:
                return backend
        configured = [backend.name for backend in self._backends]
        raise KeyError(f"backend {name!r} is not configured (configured: {configured})")

    def pull_backend(self) -> Backend | None:
        """The configured backend that serves the exposition (Prometheus), if any."""
        for backend in self._backends:
            if backend.pull:
                return backend
        return None

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """``/ready`` answers 503 while ``check()`` raises, returns False, or times out."""
        self._readiness.add(name, check)

    def remove_readiness_check(self, name: str) -> None:
        self._readiness.remove(name)

    def asgi_app(self) -> Callable[..., Any]:
        """A ``MetricsASGIApp`` serving this facade's exposition, /health and /ready from the
        service's own ASGI server: ``app.mount("/metrics", m.asgi_app())``."""
        from metricsfacade.web.apps import MetricsASGIApp, facade_routes  # noqa: PLC0415 (on use)

        return MetricsASGIApp(facade_routes(self, self._readiness))

    def wsgi_app(self) -> Callable[..., Any]:
        """A ``MetricsWSGIApp`` serving the same routes from the service's WSGI server."""
        from metricsfacade.web.apps import MetricsWSGIApp, facade_routes  # noqa: PLC0415 (on use)

        return MetricsWSGIApp(facade_routes(self, self._readiness))

    def find(self, name: str) -> MetricHandle[Any] | None:
        """The metric declared under ``name`` (a counter also as ``name`` + ``_total``)."""
        return self._declarations.find(name)

    def has_series_budget(self) -> bool:
        """Whether a new series would stay under the cardinality limit."""
        return self._binder.has_series_budget()

    def add_service(self, service: Service) -> None:
        """Run ``service`` (e.g. the system collector) while the facade is configured and
        enabled: started now if it is, restarted by ``configure()``, stopped by ``close()``."""
        with self._lock:
            self._services.append(service)
            config = self._config
        if config is not None and config.enabled:
            service.start(config)

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` just before every Prometheus scrape, so pulled values are fresh."""
        self._collect_hooks.append(hook)

    def flushing_thread(self) -> int | None:
        """The ident of the thread flushing the push backends right now, if any."""
        flusher = self._flusher
        return flusher.flushing_thread if flusher is not None else None

    def swap_store(self, store: SeriesStore) -> SeriesStore:
        """Record into ``store`` from now on and return the previous one (for test helpers
        such as MetricsMock, which isolate a test's values). Push backends are flushed
        first, so nothing recorded before the swap is lost."""
        self.flush()
        with self._lock:
            previous, self._binder.store = self._binder.store, store
            self._attach(self._backends, self._config or MetricsConfig())
            if self._flusher is not None:
                self._flusher.use_store(store)
        return previous

    def flush(self) -> None:
        """Send to the push backends what changed since their previous flush, now."""
        flusher = self._flusher
        if flusher is not None:
            flusher.flush()

    def close(self) -> None:
        """Send what push backends have left, close the backends and stop the endpoint.
        Recording becomes a no-op; the values recorded stay for the next ``configure()``."""
        self._stop_services()
        self._unconfigure()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- declaration -----------------------------------------------------------------------

    def counter(self, name: str, help: str, labels: Iterable[str] | None = None) -> Counter:
        """Declare (or get) a monotonically increasing counter."""
        return self._declarations.declare(Counter, make_spec(name, help, Kind.COUNTER, labels))

    def gauge(
        self,
        name: str,
        help: str,
        labels: Iterable[str] | None = None,
        *,
        multiprocess_mode: str = "sum",
    ) -> Gauge:
        """Declare (or get) a gauge: a value that goes up and down. ``multiprocess_mode``
        says how the values of several worker processes merge (``sum``, ``max``, ``min``,
        ``latest`` or ``worker``) when Prometheus runs with a ``multiprocess_dir``."""
        spec = make_spec(name, help, Kind.GAUGE, labels, multiprocess_mode=multiprocess_mode)
        return self._declarations.declare(Gauge, spec)

    def histogram(
        self,
        name: str,
        help: str,
        labels: Iterable[str] | None = None,
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """Declare (or get) a histogram; without buckets it takes the configured default."""
        spec = make_spec(name, help, Kind.HISTOGRAM, labels, buckets)
        return self._declarations.declare(Histogram, spec)

    def timer(
        self,
        name: str,
        help: str,
        labels: Iterable[str] | None = None,
        buckets: Sequence[float] | None = None,
    ) -> Timer:
        """Declare (or get) a histogram of seconds with ``.time()``; name it ``*_seconds``."""
        return self._declarations.declare(Timer, make_spec(name, help, Kind.TIMER, labels, buckets))

    def declare(self, spec: MetricSpec) -> MetricHandle[Any]:
        """Declare (or get) the metric a :func:`~metricsfacade.spec.make_spec` result
        describes: for registries that build specs from data, and metricsfacade's own tools
        (``make_spec(..., internal=True)`` may use the reserved ``metricsfacade_`` prefix)."""
        return self._declarations.declare(HANDLE_TYPES[spec.kind], spec)

    def _own_counter(self, name: str, help: str, labels: Sequence[str]) -> Counter:
        """metricsfacade's own counters: the reserved prefix, exempt from the series cap."""
        spec = make_spec(name, help, Kind.COUNTER, labels, internal=True)
        return self._declarations.declare(Counter, spec)

    # -- dropped recordings ----------------------------------------------------------------

    def reject_recording(self, metric: str, reason: str, detail: str) -> None:
        """Count a dropped recording in metricsfacade_dropped_total{metric,reason} and log
        it once per metric and reason; raise RecordError instead in strict mode. For helpers
        that validate their own input (``metric`` must be a bounded, declared name)."""
        self._drops.reject_recording(metric, reason, detail)

    def count_dropped(self, metric: str, reason: str, detail: str, count: float = 1) -> None:
        """Count ``count`` recordings dropped (never raises; logged once per metric and
        reason). For code that drops recordings on purpose, such as an overloaded proxy."""
        self._drops.count_dropped(metric, reason, detail, count)

    # -- lifecycle helpers -----------------------------------------------------------------

    def _start_endpoint(self, config: MetricsConfig) -> Endpoint:
        pull = self.pull_backend()
        endpoint = Endpoint(config, pull.render if pull is not None else None, self._readiness)
        endpoint.start()
        return endpoint

    def _run_collect_hooks(self) -> None:
        for hook in list(self._collect_hooks):
            try:
                hook()
            except Exception:
                logger.exception("metricsfacade: a collect hook failed")

    def _restart_services(self) -> None:
        self._stop_services()
        config = self._config
        if config is None or not config.enabled:
            return
        for service in list(self._services):
            try:
                service.start(config)
            except Exception:
                logger.exception("metricsfacade: starting %r failed", service)

    def _stop_services(self) -> None:
        for service in list(self._services):
            try:
                service.stop()
            except Exception:
                logger.exception("metricsfacade: stopping %r failed", service)

    def _attach(self, backends: tuple[Backend, ...], config: MetricsConfig) -> None:
        """Point the backends at the store, and every declared metric at its cells."""
        pushing = any(isinstance(backend, PushBackend) for backend in backends)
        store = self._binder.store
        store.configure(
            keep_values=any(backend.keeps_values for backend in backends),
            sample_limit=config.max_samples_per_flush if pushing else 0,
        )
        for backend in backends:
            backend.attach(store)
            backend.set_collect_hook(self._run_collect_hooks)
        self._rebind_all()
        for backend in backends:  # bound now, so they find their series declared
            backend.set_drop_reporter(self._drops.drop_reporter(backend))

    def _detach(self) -> tuple[tuple[Backend, ...], PushFlusher | None]:
        """Stop the endpoint and take the backends and the flusher out; return them for the
        caller to close once it has released the lock (the last flush may report drops,
        which records a metric). Handles stay wired until the caller binds them again."""
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
        backends, self._backends = self._backends, ()
        flusher, self._flusher = self._flusher, None
        return backends, flusher

    def _unconfigure(self) -> None:
        """Send what is left, close everything, and make recording a no-op."""
        with self._lock:
            retired, flusher = self._detach()
            self._config = None
            self._declarations.common_labels = {}
        _retire(retired, flusher)
        with self._lock:
            if self._config is None:
                self._rebind_all()

    def _rebind_all(self) -> None:
        """Point every series at the store, or at nothing while no backend is configured."""
        config = self._config
        self._binder.bind_all(
            self._declarations,
            recording=bool(self._backends),
            default_buckets=config.default_buckets if config is not None else DEFAULT_BUCKETS,
        )

    def _register_exit_hook(self) -> None:
        """Flush push backends at interpreter exit, and at the end of a multiprocessing
        child, which leaves with ``os._exit`` (no atexit): its finalizers still run. Weak
        references let the facade die."""
        if not self._exit_hook_registered:
            self._exit_hook_registered = True
            atexit.register(_close_at_exit, weakref.ref(self))
            multiprocessing.util.register_after_fork(self, _flush_when_child_exits)

    def _after_fork_in_child(self) -> None:
        self._lock = self._binder.lock = self._declarations.lock = threading.RLock()


def _retire(backends: tuple[Backend, ...], flusher: PushFlusher | None) -> None:
    """Send what the push backends have left, then close every backend."""
    if flusher is not None:
        try:
            flusher.close(CLOSE_TIMEOUT_SECS)
        except Exception:
            logger.exception("metricsfacade: the last push flush failed")
    for backend in backends:
        try:
            backend.close()
        except Exception:
            logger.exception("metricsfacade: closing the %s backend failed", backend.name)


def _flush_when_child_exits(facade: Metrics) -> None:
    """In a multiprocessing child (fork): flush when its process ends."""
    multiprocessing.util.Finalize(facade, facade.flush, exitpriority=0)


def _close_at_exit(facade_ref: weakref.ref[Metrics]) -> None:
    facade = facade_ref()
    if facade is not None:
        facade.close()


class Service(Protocol):
    """Something that runs alongside a configured facade (see ``Metrics.add_service``)."""

    def start(self, config: MetricsConfig) -> None: ...

    def stop(self) -> None: ...
