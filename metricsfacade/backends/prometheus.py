"""Prometheus backend: the facade's series, rendered at scrape time.

Values live in the facade's cells (see ``metricsfacade.store``) rather than prometheus-client
metric objects: the record path stays ours (validated, lock-cheap, bisect for buckets).
A scrape writes the exposition straight from the cells (``metricsfacade.exposition``, the
same bytes prometheus-client writes). With ``multiprocess_dir``, every process also writes
its values to a file there, and a scrape renders the merge of all of them
(``metricsfacade.multiprocess``). With ``registry = "global"``, a collector on
prometheus-client's default registry serves the cells beside the host's own metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from metricsfacade import settings as parse
from metricsfacade.backends.base import Backend, Exposition
from metricsfacade.exposition import ExpositionWriter, Family, negotiate
from metricsfacade.multiprocess.files import worker_file
from metricsfacade.multiprocess.merge import DirectoryMerger
from metricsfacade.settings import InvalidSetting, setting
from metricsfacade.spec import Kind
from metricsfacade.store import (
    CounterCell,
    GaugeCell,
    HistogramCell,
    HistogramReading,
    SeriesStore,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric


@attrs.frozen
class PrometheusSettings:
    """The ``[prometheus]`` table."""

    #: "own": a private CollectorRegistry (no clash with the host's metrics or process_*);
    #: "global": prometheus-client's default REGISTRY, so /metrics also serves the host's.
    registry: str = setting("own", parse.choice("own", "global"))
    #: where every worker process of a service writes its values, so that any of them
    #: serves all of them merged (gunicorn, uvicorn --workers); unset: this process only
    multiprocess_dir: str | None = setting(None, parse.path)

    def __attrs_post_init__(self) -> None:
        if self.multiprocess_dir is not None:
            if self.registry == "global":
                raise InvalidSetting(
                    "multiprocess_dir: serves the merge of the workers' files, which "
                    "prometheus-client's global registry cannot hold; use registry = 'own'"
                )
            if os.name != "posix":
                raise InvalidSetting("multiprocess_dir: needs a POSIX system (it uses flock)")


def _nothing() -> None:
    """No collect hook yet."""


class StoreCollector:
    """A prometheus-client collector reading a SeriesStore; common labels come first."""

    def __init__(
        self,
        store: SeriesStore,
        common_labels: Mapping[str, str],
        core: ModuleType,
        format_bound: Callable[[float], str],
    ) -> None:
        self._store = store
        self._core = core  # prometheus_client.core: the metric families
        #: floatToGoString: "0.005", "1e+06", "+Inf", as Prometheus writes bucket bounds
        self._format_bound = format_bound
        self._common_names = tuple(common_labels)
        self._common_values = tuple(common_labels.values())
        #: the facade's collect hooks (the system collector refreshes its gauges here)
        self.before_collect: Callable[[], None] = _nothing

    def describe(self) -> list[Metric]:
        """Empty on purpose: metrics are declared over time, so the registry must not cache
        names at registration (it would also call collect() to find them)."""
        return []

    def collect(self) -> Iterator[Metric]:
        self.before_collect()
        core = self._core
        format_bound = self._format_bound
        for stored in self._store.metrics():
            spec = stored.spec
            names = (*self._common_names, *spec.label_names)
            family: Any
            if spec.kind is Kind.COUNTER:
                family = core.CounterMetricFamily(spec.name, spec.help, labels=names)
            elif spec.kind is Kind.GAUGE:
                family = core.GaugeMetricFamily(spec.name, spec.help, labels=names)
            else:
                family = core.HistogramMetricFamily(spec.name, spec.help, labels=names)
            for label_values, cell in self._store.series(stored):
                values = (*self._common_values, *label_values)
                if isinstance(cell, (CounterCell, GaugeCell)):
                    family.add_metric(values, cell.read())
                elif isinstance(cell, HistogramCell):
                    reading = cell.read()
                    buckets = [(format_bound(le), n) for le, n in reading.cumulative()]
                    family.add_metric(values, buckets, reading.sum)
            yield family


class PrometheusBackend(Backend):
    name = "prometheus"
    Settings = PrometheusSettings
    pull = True
    needs = ("prometheus_client", "prometheus")

    def __init__(
        self,
        common_labels: Mapping[str, str],
        use_global_registry: bool = False,
        multiprocess_dir: str | None = None,
    ) -> None:
        client = self.library("prometheus_client")
        self._core = self.library("prometheus_client.core")
        self._exposition = self.library("prometheus_client.exposition")
        self._format_bound = self.library("prometheus_client.utils").floatToGoString
        self._common_labels = dict(common_labels)
        self._writer = ExpositionWriter(common_labels)
        self._collector: StoreCollector | None = None
        self._before_collect: Callable[[], None] = _nothing
        self.multiprocess_dir = multiprocess_dir
        self._merger = DirectoryMerger(multiprocess_dir) if multiprocess_dir else None
        #: the store writing to this process's multi-process file for this backend
        self._shared: SeriesStore | None = None
        #: prometheus-client's default registry, when the host's metrics are served too
        self.registry: CollectorRegistry | None = client.REGISTRY if use_global_registry else None

    @classmethod
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> PrometheusBackend:
        return cls(common_labels, settings.registry == "global", settings.multiprocess_dir)

    @classmethod
    def refreshed_by_scrapes(cls, settings: Any) -> bool:
        """Not with a multiprocess_dir: a scrape in another worker reads this process's
        file without running this process's collect hooks."""
        return settings.multiprocess_dir is None

    def describe(self) -> str:
        text = "the exposition of the endpoint (or of asgi_app()/wsgi_app())"
        if self.multiprocess_dir is not None:
            text += f", merging the worker processes' files in {self.multiprocess_dir}"
        return text

    def attach(self, store: SeriesStore) -> None:
        self.close()  # a store swapped in replaces the previous one
        super().attach(store)
        if self.multiprocess_dir is not None:
            store.share(worker_file(self.multiprocess_dir, store), self)
            self._shared = store
        if self.registry is not None:
            self._collector = StoreCollector(
                store, self._common_labels, self._core, self._format_bound
            )
            self._collector.before_collect = self._before_collect
            self.registry.register(self._collector)

    def set_collect_hook(self, hook: Callable[[], None]) -> None:
        self._before_collect = hook
        if self._collector is not None:
            self._collector.before_collect = hook

    def render(self, accept: str | None) -> Exposition:
        """The exposition in the format the Accept header asks for (text or OpenMetrics)."""
        if self.registry is not None:
            encoder, content_type = self._exposition.choose_encoder(accept or "")
            return encoder(self.registry), content_type
        self._before_collect()
        openmetrics, content_type = negotiate(accept)
        families = (
            self._merger.families() if self._merger is not None else store_families(self.store)
        )
        return self._writer.render(families, openmetrics), content_type

    def close(self) -> None:
        """Unregister from the global registry; stop writing to the multi-process file
        (it stays, with this process's values, for as long as the process lives)."""
        if self._collector is not None and self.registry is not None:
            self.registry.unregister(self._collector)
            self._collector = None
        if self._shared is not None:
            self._shared.unshare(self)
            self._shared = None


def store_families(store: SeriesStore) -> Iterator[Family]:
    """The store's metrics as families to render (a histogram copied under its lock)."""
    for stored in store.metrics():
        spec = stored.spec
        series: list[tuple[tuple[str, ...], float | HistogramReading]] = [
            (label_values, cell.read()) for label_values, cell in store.series(stored)
        ]
        yield Family(spec.key, spec.kind, spec.help, spec.label_names, series)
