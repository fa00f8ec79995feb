"""Prometheus backend: the facade's series, exposed through prometheus-client at scrape time.

Values live in the facade's cells (see ``metricsfacade.store``) rather than prometheus-client
metric objects: the record path stays ours (validated, lock-cheap, bisect for buckets) and a
custom collector turns the cells into metric families when scraped. prometheus-client still
does the exposition formats, so the output is exactly what Prometheus and OpenMetrics
parsers expect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from metricsfacade.backends.base import Backend
from metricsfacade.config import MetricsConfig
from metricsfacade.spec import Kind
from metricsfacade.store import CounterCell, GaugeCell, HistogramCell, SeriesStore

#: Formats a bucket bound the way Prometheus does ("0.005", "1e+06", "+Inf").
_format_bound = cast(Callable[[float], str], floatToGoString)


def _nothing() -> None:
    """No collect hook yet."""


class StoreCollector:
    """A prometheus-client collector reading a SeriesStore; common labels come first."""

    def __init__(self, store: SeriesStore, common_labels: dict[str, str]) -> None:
        self._store = store
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
        for stored in self._store.metrics():
            spec = stored.spec
            names = (*self._common_names, *spec.label_names)
            family: Any
            if spec.kind is Kind.COUNTER:
                family = CounterMetricFamily(spec.name, spec.help, labels=names)
            elif spec.kind is Kind.GAUGE:
                family = GaugeMetricFamily(spec.name, spec.help, labels=names)
            else:
                family = HistogramMetricFamily(spec.name, spec.help, labels=names)
            for label_values, cell in self._store.series(stored):
                values = (*self._common_values, *label_values)
                if isinstance(cell, (CounterCell, GaugeCell)):
                    family.add_metric(values, cell.read())
                elif isinstance(cell, HistogramCell):
                    reading = cell.read()
                    buckets = [(_format_bound(le), n) for le, n in reading.cumulative()]
                    family.add_metric(values, buckets, reading.sum)
            yield family


class PrometheusBackend(Backend):
    name = "prometheus"

    def __init__(self, common_labels: dict[str, str], use_global_registry: bool = False) -> None:
        self._common_labels = common_labels
        self._collector: StoreCollector | None = None
        self._before_collect: Callable[[], None] = _nothing
        self.registry: CollectorRegistry = (
            REGISTRY if use_global_registry else CollectorRegistry(auto_describe=False)
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> PrometheusBackend:
        return cls(dict(config.common_labels), config.prometheus.registry == "global")

    def attach(self, store: SeriesStore) -> None:
        super().attach(store)
        self.close()  # a store swapped in replaces the previous one
        self._collector = StoreCollector(store, self._common_labels)
        self._collector.before_collect = self._before_collect
        self.registry.register(self._collector)

    def set_collect_hook(self, hook: Callable[[], None]) -> None:
        self._before_collect = hook
        if self._collector is not None:
            self._collector.before_collect = hook

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the Accept header asks for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def close(self) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None
