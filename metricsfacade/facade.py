"""``Metrics``: declares metrics, binds them to the series store, guards the record path.

One facade owns its metric handles, its series store, its backends, the cardinality budget
and the HTTP endpoint. Handles outlive configuration: metrics declared before ``configure()``
(at module level, as libraries do) are bound when it runs, and re-bound if it runs again. The
store outlives configuration too, so a re-configure keeps every value recorded so far.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from metricsfacade import forking, shutdown
from metricsfacade.backends import create_backends
from metricsfacade.backends.base import Backend, PushBackend
from metricsfacade.backends.flusher import PushFlusher
from metricsfacade.backends.lines import dotted_name
from metricsfacade.config import ConfigSource, CustomMetric, MetricsConfig, load_config
from metricsfacade.endpoint import Endpoint
from metricsfacade.errors import DeclarationError, RecordError
from metricsfacade.handles import (
    Child,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    MetricHandle,
    RecordFn,
    Timer,
    _noop,
)
from metricsfacade.readiness import ReadinessCheck, ReadinessChecks
from metricsfacade.spec import DEFAULT_BUCKETS, Kind, MetricSpec, make_spec, text_safe
from metricsfacade.store import NegativeObservation, SeriesStore

logger = logging.getLogger("metricsfacade")

#: The label value every label takes in a metric's overflow series.
OVERFLOW_LABEL_VALUE = "__overflow__"
DEFAULT_CARDINALITY_LIMIT = 10_000
#: How long close() may spend sending what push backends have left (plus one send's timeout).
CLOSE_TIMEOUT_SECS = 5.0

H = TypeVar("H", bound=MetricHandle[Any])


class Metrics:
    """A metrics facade. ``Metrics(config)`` configures it at once; ``Metrics()`` does not.

    Until configured (and after ``close()``) every recording is a silent no-op.
    """

    def __init__(
        self, config: ConfigSource = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._handles: dict[str, MetricHandle[Any]] = {}
        #: exposition names and StatsD names taken, for the clash checks of declarations
        self._exposed: dict[str, MetricSpec] = {}
        self._dotted: dict[str, MetricSpec] = {}
        self._config: MetricsConfig | None = None
        self._backends: tuple[Backend, ...] = ()
        self._store = SeriesStore()
        self._flusher: PushFlusher | None = None
        self._endpoint: Endpoint | None = None
        self._readiness = ReadinessChecks()
        self._series_count = 0
        self._limit = DEFAULT_CARDINALITY_LIMIT
        self._strict = False
        self._reported: set[tuple[str, str]] = set()
        self._exit_hook_registered = False
        self._services: list[Service] = []
        self._collect_hooks: list[Callable[[], None]] = []
        forking.LOCKS.add(self)
        self._dropped = self._internal_counter(
            "metricsfacade_dropped_total",
            "Recordings dropped because they were invalid or a backend failed",
            ["metric", "reason"],
        )
        self._overflowed = self._internal_counter(
            "metricsfacade_cardinality_overflow_total",
            "Recordings folded into a metric's overflow series past the cardinality limit",
            ["metric"],
        )
        self._undelivered = self._internal_counter(
            "metricsfacade_backend_dropped_total",
            "Lines a push backend could not deliver (agent down, too long, closing)",
            ["backend", "reason"],
        )
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
            for handle in self._handles.values():
                _check_common_labels(handle.spec, config)
            for custom in config.custom_metrics:
                self._declare_custom(custom, config)
            # Built before the old ones close, so a failure here leaves the old setup serving.
            backends = tuple(create_backends(config)) if config.enabled else ()
            retired, retired_flusher = self._detach()
            self._config = config
            self._backends = backends
            self._strict = config.strict
            self._limit = config.cardinality_limit
            self._attach(backends, config)
        _retire(retired, retired_flusher)
        pushing = [backend for backend in backends if isinstance(backend, PushBackend)]
        try:
            with self._lock:
                if pushing and self._config is config:
                    self._flusher = PushFlusher(self._store, pushing, fresh=retired_flusher is None)
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
        if not isinstance(name, str):
            return None
        handle = self._handles.get(name)
        if handle is None and name.endswith("_total"):
            handle = self._handles.get(name[: -len("_total")])
            if handle is not None and handle.spec.kind is not Kind.COUNTER:
                return None
        return handle

    def has_series_budget(self) -> bool:
        """Whether a new series would stay under the cardinality limit."""
        return self._series_count < self._limit

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
            previous, self._store = self._store, store
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
        return self._declare(Counter, make_spec(name, help, Kind.COUNTER, labels))

    def gauge(self, name: str, help: str, labels: Iterable[str] | None = None) -> Gauge:
        """Declare (or get) a gauge: a value that goes up and down."""
        return self._declare(Gauge, make_spec(name, help, Kind.GAUGE, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Iterable[str] | None = None,
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """Declare (or get) a histogram; without buckets it takes the configured default."""
        return self._declare(Histogram, make_spec(name, help, Kind.HISTOGRAM, labels, buckets))

    def timer(
        self,
        name: str,
        help: str,
        labels: Iterable[str] | None = None,
        buckets: Sequence[float] | None = None,
    ) -> Timer:
        """Declare (or get) a histogram of seconds with ``.time()``; name it ``*_seconds``."""
        return self._declare(Timer, make_spec(name, help, Kind.TIMER, labels, buckets))

    def declare(self, spec: MetricSpec) -> MetricHandle[Any]:
        """Declare (or get) the metric a :func:`~metricsfacade.spec.make_spec` result
        describes: for registries that build specs from data, and metricsfacade's own tools
        (``make_spec(..., internal=True)`` may use the reserved ``metricsfacade_`` prefix)."""
        return self._declare(_HANDLE_TYPES[spec.kind], spec)

    def _internal_counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """metricsfacade's own counters: the reserved prefix, exempt from the series cap."""
        return self._declare(Counter, make_spec(name, help, Kind.COUNTER, labels, internal=True))

    def _declare(self, handle_type: type[H], spec: MetricSpec) -> H:
        with self._lock:
            existing = self._handles.get(spec.key)
            if existing is not None:
                if _same_metric(existing.spec, spec):
                    return existing  # type: ignore[return-value]
                raise DeclarationError(
                    f"{spec.describe()} conflicts with the earlier declaration "
                    f"{existing.spec.describe()}"
                )
            if spec.key.startswith("metricsfacade_") and not spec.internal:
                raise DeclarationError(
                    f"metric names starting with 'metricsfacade_' are reserved: {spec.name!r}"
                )
            if self._config is not None:
                _check_common_labels(spec, self._config)
            self._claim_names(spec)
            handle = handle_type(self, spec)
            self._handles[spec.key] = handle
            if spec.label_names:
                handle._unlabeled = self._missing_labels_child(handle)
            if self._config is not None:
                self._bind(handle)
            if not spec.label_names:
                handle._unlabeled = self._child_for(handle, (), {})
            return handle

    def _claim_names(self, spec: MetricSpec) -> None:
        """Refuse a metric whose names clash with another's: in the exposition (a gauge
        ``x_count`` beside a histogram ``x``) or as a StatsD/Datadog name (``a_b`` and
        ``a:b`` are both ``a.b``). A dict lookup per name, so declaring stays O(1)."""
        names = spec.exposed_names
        dotted = dotted_name(spec)
        for name in sorted(names):
            other = self._exposed.get(name)
            if other is not None:
                raise DeclarationError(
                    f"{spec.describe()} would expose {name!r}, which "
                    f"{other.describe()} already exposes"
                )
        other = self._dotted.get(dotted)
        if other is not None:
            raise DeclarationError(
                f"{spec.describe()} would be {dotted!r} on StatsD and Datadog, as "
                f"{other.describe()} is"
            )
        self._exposed.update(dict.fromkeys(names, spec))
        self._dotted[dotted] = spec

    # -- binding ---------------------------------------------------------------------------

    def _bind(self, handle: MetricHandle[Any]) -> None:
        spec = handle.spec
        if spec.kind.has_buckets and spec.buckets is None:
            config = self._config
            buckets = config.default_buckets if config is not None else DEFAULT_BUCKETS
            spec = attrs.evolve(spec, buckets=buckets)
        handle.bound_spec = spec
        if self._backends:
            self._store.declare(spec)
        for child in handle.series.values():
            self._wire(handle, child)
        if handle._overflow is not None:
            self._wire(handle, handle._overflow, self._overflow_counter(handle))

    def _wire(self, handle: MetricHandle[Any], child: Child, extra: RecordFn | None = None) -> None:
        """Point a child's record functions at its cell in the store, or at nothing while
        no backend is configured."""
        if not self._backends:
            for attribute in _record_attributes(type(child)):
                setattr(child, attribute, _noop)
            return
        cell: Any = self._store.cell(handle.spec.key, child.label_values)
        if isinstance(child, CounterChild):
            child._inc = _also(cell.inc, extra)
        elif isinstance(child, GaugeChild):
            child._set = _also(cell.set, extra)
            child._add = _also(cell.add, extra)
        elif isinstance(child, HistogramChild):
            child._observe = _also(cell.observe, extra)

    # -- the slow path of labels() ---------------------------------------------------------

    def _child_for(
        self, handle: MetricHandle[Any], values: tuple[object, ...], by_name: Mapping[str, object]
    ) -> Any:
        """Validate a label set not in the cache, then create, fold or reject its series."""
        names = handle.spec.label_names
        if by_name:
            if values:
                return self._bad_labels(
                    handle, "invalid_labels", "labels given both by position and by name"
                )
            unknown = sorted(set(by_name) - set(names))
            if unknown:
                return self._bad_labels(
                    handle, "unknown_label", f"unknown label {unknown[0]!r}; declared {list(names)}"
                )
            missing = [name for name in names if name not in by_name]
            if missing:
                return self._bad_labels(
                    handle, "missing_label", f"missing label {missing[0]!r}; declared {list(names)}"
                )
            values = tuple(by_name[name] for name in names)
        if len(values) != len(names):
            reason = "missing_label" if len(values) < len(names) else "unknown_label"
            return self._bad_labels(
                handle, reason, f"{len(values)} label values for labels {list(names)}"
            )
        try:
            hash(values)
            normalized = tuple(text_safe(v if type(v) is str else str(v)) for v in values)
        except Exception as exc:  # unhashable, or a __hash__ or __str__ that raises
            return self._bad_labels(
                handle, "invalid_label_value", f"a label value is unusable: {exc!r}"
            )
        child = handle.series.get(normalized)  # a dict read: no lock needed
        if child is None:
            with self._lock:
                child = handle.series.get(normalized)
                if child is None:
                    if not handle.spec.internal and self._series_count >= self._limit:
                        return self._overflow_child(handle)
                    child = handle.child_type(handle, normalized)
                    self._wire(handle, child)
                    handle.series[normalized] = child
                    if not handle.spec.internal:
                        self._series_count += 1
        if all(type(value) is str for value in values):
            # Only str keys in the cache: 1, True and 1.0 are equal keys but three series.
            handle._children[values] = child
        return child

    def _overflow_child(self, handle: MetricHandle[Any]) -> Any:
        """The one series per metric that new label sets fold into past the limit. Never cached
        under the caller's key, so memory stays bounded however many label values arrive."""
        if handle._overflow is None:
            child = handle.child_type(
                handle, (OVERFLOW_LABEL_VALUE,) * len(handle.spec.label_names)
            )
            self._wire(handle, child, self._overflow_counter(handle))
            handle._overflow = child
            logger.warning(
                "metricsfacade: the cardinality limit of %d series is reached; new label sets "
                "of %r are folded into its %s series (counted in "
                "metricsfacade_cardinality_overflow_total)",
                self._limit,
                handle.spec.name,
                OVERFLOW_LABEL_VALUE,
            )
        return handle._overflow

    def _drop_reporter(self, backend: Backend) -> Callable[[str, int], None]:
        """Counts a backend's undeliverable lines. The children are bound now, so reporting
        from a flusher thread never waits for the facade's lock."""
        bound = {
            reason: self._undelivered.labels(backend.name, reason)
            for reason in backend.drop_reasons
        }

        def report(reason: str, count: int) -> None:
            child = bound.get(reason) or self._undelivered.labels(backend.name, reason)
            child.inc(count)

        return report

    def _overflow_counter(self, handle: MetricHandle[Any]) -> RecordFn:
        counted = self._overflowed.labels(handle.spec.name)

        def count_overflow(_value: float) -> None:
            counted.inc()

        return count_overflow

    def _missing_labels_child(self, handle: MetricHandle[Any]) -> Any:
        """What ``metric.inc()`` records to on a labeled metric: a rejection per call."""
        child = handle.child_type(handle, ())
        detail = f"recorded without labels; declared {list(handle.spec.label_names)}"

        def reject(_value: float) -> None:
            self._reject(handle, "missing_label", detail)

        for attribute in ("_inc", "_set", "_add", "_observe"):
            if hasattr(type(child), attribute):
                setattr(child, attribute, reject)
        return child

    # -- record-time problems --------------------------------------------------------------

    def _bad_labels(self, handle: MetricHandle[Any], reason: str, detail: str) -> Any:
        self._reject(handle, reason, detail)
        return handle.child_type(handle, ())  # records nowhere: its functions are no-ops

    def _reject(self, handle: MetricHandle[Any], reason: str, detail: str) -> None:
        """Count and drop (log once per metric and reason), or raise in strict mode."""
        if handle is self._dropped and not self._strict:
            return  # a bad recording of the drop counter itself: nowhere left to count it
        self.reject_recording(handle.spec.name, reason, detail)

    def reject_recording(self, metric: str, reason: str, detail: str) -> None:
        """Count a dropped recording in metricsfacade_dropped_total{metric,reason} and log
        it once per metric and reason; raise RecordError instead in strict mode. For helpers
        that validate their own input (``metric`` must be a bounded, declared name)."""
        if self._strict:
            raise RecordError(f"metric {metric!r}: {detail}")
        self.count_dropped(metric, reason, detail)

    def count_dropped(self, metric: str, reason: str, detail: str, count: float = 1) -> None:
        """Count ``count`` recordings dropped (never raises; logged once per metric and
        reason). For code that drops recordings on purpose, such as an overloaded proxy."""
        self._dropped.labels(metric, reason).inc(count)
        self._report_once(metric, reason, f"dropped a recording of {metric!r}: {detail}")

    def _record_failed(self, handle: MetricHandle[Any], exc: Exception, value: object) -> None:
        """Recording raised: a value that is not a number, or a fault in the store."""
        if isinstance(exc, OverflowError):
            self._reject(handle, "out_of_range", str(exc))
        elif isinstance(exc, NegativeObservation):
            self._reject(handle, "negative_value", str(exc))
        elif isinstance(value, (int, float)):
            self._backend_failed(handle, "store", exc)
        else:
            self._reject(handle, "invalid_value", f"value {value!r} is not a number")

    def _backend_failed(self, handle: MetricHandle[Any], backend: str, exc: Exception) -> None:
        if self._strict:
            raise RecordError(
                f"metric {handle.spec.name!r}: the {backend} backend failed: {exc!r}"
            ) from exc
        if handle is not self._dropped:
            self._dropped.labels(handle.spec.name, "backend_error").inc()
        self._report_once(
            handle.spec.name,
            "backend_error",
            f"the {backend} backend failed on {handle.spec.name!r}: {exc!r}",
        )

    def _report_once(self, metric: str, reason: str, message: str) -> None:
        key = (metric, reason)
        if key in self._reported:
            return
        self._reported.add(key)
        logger.warning(
            "metricsfacade: %s (this and later cases are counted in "
            'metricsfacade_dropped_total{metric="%s",reason="%s"}; logged once)',
            message,
            metric,
            reason,
        )

    # -- lifecycle helpers -----------------------------------------------------------------

    def _start_endpoint(self, config: MetricsConfig) -> Endpoint:
        pull = self.pull_backend()
        endpoint = Endpoint(config, pull.render if pull is not None else None, self._readiness)
        endpoint.start()
        return endpoint

    def _declare_custom(self, custom: CustomMetric, config: MetricsConfig) -> None:
        spec = make_spec(custom.name, custom.help, Kind(custom.kind), custom.labels, custom.buckets)
        _check_common_labels(spec, config)
        self._declare(_HANDLE_TYPES[spec.kind], spec)

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
        self._store.configure(
            keep_values=any(backend.keeps_values for backend in backends),
            sample_limit=config.max_samples_per_flush if pushing else 0,
        )
        for backend in backends:
            backend.attach(self._store)
            backend.set_collect_hook(self._run_collect_hooks)
        self._rebind_all()
        for backend in backends:  # bound now, so they find their series declared
            backend.set_drop_reporter(self._drop_reporter(backend))

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
        _retire(retired, flusher)
        with self._lock:
            if self._config is None:
                self._rebind_all()

    def _rebind_all(self) -> None:
        for handle in self._handles.values():
            self._bind(handle)

    def _register_exit_hook(self) -> None:
        """Flush push backends at interpreter exit, and at the end of a multiprocessing
        child, which leaves with ``os._exit`` (no atexit): its finalizers still run. Weak
        references let the facade die."""
        if not self._exit_hook_registered:
            self._exit_hook_registered = True
            atexit.register(_close_at_exit, weakref.ref(self))
            multiprocessing.util.register_after_fork(self, _flush_when_child_exits)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()


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


def _record_attributes(child_type: type[Child]) -> tuple[str, ...]:
    """The attributes of a child that the facade points at a cell."""
    if issubclass(child_type, CounterChild):
        return ("_inc",)
    if issubclass(child_type, GaugeChild):
        return ("_set", "_add")
    return ("_observe",)


def _also(record: RecordFn, extra: RecordFn | None) -> RecordFn:
    """``record``, then ``extra`` (the overflow series also counts each folded recording)."""
    if extra is None:
        return record

    def both(value: float) -> None:
        record(value)
        extra(value)

    return both


_HANDLE_TYPES: dict[Kind, type[MetricHandle[Any]]] = {
    Kind.COUNTER: Counter,
    Kind.GAUGE: Gauge,
    Kind.HISTOGRAM: Histogram,
    Kind.TIMER: Timer,
}


class Service(Protocol):
    """Something that runs alongside a configured facade (see ``Metrics.add_service``)."""

    def start(self, config: MetricsConfig) -> None: ...

    def stop(self) -> None: ...


def _check_common_labels(spec: MetricSpec, config: MetricsConfig) -> None:
    clash = sorted(set(spec.label_names) & set(config.common_labels))
    if clash:
        raise DeclarationError(
            f"{spec.describe()}: label {clash[0]!r} is also a common label in the config"
        )


def _same_metric(first: MetricSpec, second: MetricSpec) -> bool:
    """Same kind, labels and buckets: the help text may differ between declarations."""
    return (first.kind, first.label_names, first.buckets) == (
        second.kind,
        second.label_names,
        second.buckets,
    )
