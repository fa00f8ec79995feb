"""Prometheus backend: the facade's series, exposed through prometheus-client at scrape time.

Values live in the facade's cells (see ``metricsfacade.store``) rather than prometheus-client
metric objects: the record path stays ours (validated, lock-cheap, bisect for buckets) and a
custom collector turns the cells into metric families when scraped. prometheus-client still
does the exposition formats, so the output is exactly what Prometheus and OpenMetrics
parsers expect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from metricsfacade import settings as parse
from metricsfacade.backends.base import Backend, Exposition
from metricsfacade.settings import setting
from metricsfacade.spec import Kind
from metricsfacade.store import CounterCell, GaugeCell, HistogramCell, SeriesStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric


@attrs.frozen
class PrometheusSettings:
    """The ``[prometheus]`` table."""

    #: "own": a private CollectorRegistry (no clash with the host's metrics or process_*);
    #: "global": prometheus-client's default REGISTRY, so /metrics also serves the host's.
    registry: str = setting("own", parse.choice("own", "global"))


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

    def __init__(self, common_labels: Mapping[str, str], use_global_registry: bool = False) -> None:
        client = self.library("prometheus_client")
        self._core = self.library("prometheus_client.core")
        self._exposition = self.library("prometheus_client.exposition")
        self._format_bound = self.library("prometheus_client.utils").floatToGoString
        self._common_labels = dict(common_labels)
        self._collector: StoreCollector | None = None
        self._before_collect: Callable[[], None] = _nothing
        self.registry: CollectorRegistry = (
            client.REGISTRY
            if use_global_registry
            else client.CollectorRegistry(auto_describe=False)
        )

    @classmethod
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> PrometheusBackend:
        return cls(common_labels, settings.registry == "global")

    def describe(self) -> str:
        return "the exposition of the endpoint (or of asgi_app()/wsgi_app())"

    def attach(self, store: SeriesStore) -> None:
        super().attach(store)
        self.close()  # a store swapped in replaces the previous one
        self._collector = StoreCollector(store, self._common_labels, self._core, self._format_bound)
        self._collector.before_collect = self._before_collect
        self.registry.register(self._collector)

    def set_collect_hook(self, hook: Callable[[], None]) -> None:
        self._before_collect = hook
        if self._collector is not None:
            self._collector.before_collect = hook

    def render(self, accept: str | None) -> Exposition:
        """The exposition in the format the Accept header asks for (text or OpenMetrics)."""
        encoder, content_type = self._exposition.choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None
