"""Declarations: the metrics a facade knows, by name, and the rules a new one must pass.

Declaring the same metric twice returns the first handle (the help text may differ); a
different kind, labels or buckets under the same name is a DeclarationError, and so is a
name that would clash with another metric's in the exposition or on StatsD and Datadog.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from metricsfacade.backends.lines import dotted_name
from metricsfacade.binder import SeriesBinder
from metricsfacade.errors import DeclarationError
from metricsfacade.handles import Counter, Gauge, Histogram, MetricHandle, RecordErrors, Timer
from metricsfacade.spec import Kind, MetricSpec

H = TypeVar("H", bound=MetricHandle[Any])

HANDLE_TYPES: dict[Kind, type[MetricHandle[Any]]] = {
    Kind.COUNTER: Counter,
    Kind.GAUGE: Gauge,
    Kind.HISTOGRAM: Histogram,
    Kind.TIMER: Timer,
}


class Declarations:
    """The declared metrics of one facade; new ones are bound by the binder at once."""

    def __init__(self, lock: threading.RLock, binder: SeriesBinder, errors: RecordErrors) -> None:
        self.lock = lock
        self._binder = binder
        self._errors = errors
        self._handles: dict[str, MetricHandle[Any]] = {}
        #: exposition names and StatsD names taken, for the clash checks
        self._exposed: dict[str, MetricSpec] = {}
        self._dotted: dict[str, MetricSpec] = {}
        #: labels every series carries (the config's common_labels): no metric may reuse one
        self.common_labels: Mapping[str, str] = {}

    def __iter__(self) -> Iterator[MetricHandle[Any]]:
        return iter(list(self._handles.values()))

    def declare(self, handle_type: type[H], spec: MetricSpec) -> H:
        with self.lock:
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
            check_common_labels(spec, self.common_labels)
            self._claim_names(spec)
            handle = handle_type(spec, self._binder, self._errors)
            self._handles[spec.key] = handle
            self._binder.bind_new(handle)
            return handle

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


def check_common_labels(spec: MetricSpec, common_labels: Mapping[str, str]) -> None:
    clash = sorted(set(spec.label_names) & set(common_labels))
    if clash:
        raise DeclarationError(
            f"{spec.describe()}: label {clash[0]!r} is also a common label in the config"
        )


def _same_metric(first: MetricSpec, second: MetricSpec) -> bool:
    """Same kind, labels, buckets and multi-process mode: the help text may differ."""
    return (first.kind, first.label_names, first.buckets, first.multiprocess_mode) == (
        second.kind,
        second.label_names,
        second.buckets,
        second.multiprocess_mode,
    )
