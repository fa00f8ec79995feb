"""What a declared metric is: name, kind, help, labels and buckets, validated once."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence

import attrs

from metricsfacade.errors import DeclarationError

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: The default latency buckets (seconds, 1 ms to 5 s), for histograms and timers that set
#: none when the config sets no ``histogram_buckets``. Slower calls land in +Inf.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


#: How the Prometheus backend's multi-process mode merges a gauge's values of the live
#: worker processes: their sum, max or min, the one written last, or one series per worker
#: (with a ``worker`` label holding its pid).
MULTIPROCESS_MODES = ("sum", "max", "min", "latest", "worker")


class Kind(enum.Enum):
    """The four metric kinds. A timer is a histogram of seconds that push backends send as ms."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    TIMER = "timer"

    @property
    def has_buckets(self) -> bool:
        return self in (Kind.HISTOGRAM, Kind.TIMER)


@attrs.frozen
class MetricSpec:
    """An immutable, validated metric declaration.

    ``buckets`` is ``None`` for a histogram that set none: the facade fills in the configured
    default when it binds the metric to backends.
    """

    name: str
    help: str
    kind: Kind
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    #: metricsfacade's own metrics: exempt from the cardinality limit.
    internal: bool = False
    #: how a gauge's values in several worker processes make one (see MULTIPROCESS_MODES);
    #: counters and histograms are always summed
    multiprocess_mode: str = "sum"

    @property
    def key(self) -> str:
        """The registry key: a counter ``x`` and ``x_total`` are exposed as the same series."""
        if self.kind is Kind.COUNTER and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    @property
    def exposed_names(self) -> frozenset[str]:
        """The family and sample names this metric takes in a Prometheus exposition."""
        if self.kind is Kind.COUNTER:
            return frozenset((self.key, f"{self.key}_total", f"{self.key}_created"))
        if self.kind.has_buckets:
            suffixes = ("", "_bucket", "_count", "_sum", "_created")
            return frozenset(f"{self.name}{suffix}" for suffix in suffixes)
        return frozenset((self.name,))

    def describe(self) -> str:
        labels = ", ".join(self.label_names)
        text = f"{self.kind.value} {self.name!r} (labels [{labels}]"
        if self.kind.has_buckets:
            text += f", buckets {list(self.buckets) if self.buckets else 'default'}"
        if self.multiprocess_mode != "sum":
            text += f", multiprocess_mode {self.multiprocess_mode!r}"
        return text + ")"


def make_spec(
    name: str,
    help: str,
    kind: Kind,
    labels: Iterable[str] | None = None,
    buckets: Sequence[float] | None = None,
    *,
    internal: bool = False,
    multiprocess_mode: str = "sum",
) -> MetricSpec:
    """Validate a declaration and return its spec, raising :class:`DeclarationError`."""
    validate_metric_name(name)
    if not isinstance(help, str):
        raise DeclarationError(f"metric {name!r}: help must be a string, got {help!r}")
    if isinstance(labels, str):
        raise DeclarationError(
            f"metric {name!r}: labels must be a list of names, not the string {labels!r}"
        )
    try:
        label_names = tuple(labels or ())
    except TypeError:
        raise DeclarationError(
            f"metric {name!r}: labels must be a list of names, got {labels!r}"
        ) from None
    validate_label_names(name, label_names, kind)
    if buckets is not None and not kind.has_buckets:
        raise DeclarationError(f"metric {name!r}: only histograms and timers take buckets")
    bucket_tuple = validate_buckets(name, buckets) if buckets is not None else None
    validate_multiprocess_mode(name, kind, label_names, multiprocess_mode)
    return MetricSpec(
        name, text_safe(help), kind, label_names, bucket_tuple, internal, multiprocess_mode
    )


def validate_multiprocess_mode(
    metric: str, kind: Kind, label_names: Sequence[str], mode: object
) -> None:
    if mode not in MULTIPROCESS_MODES:
        raise DeclarationError(
            f"metric {metric!r}: multiprocess_mode must be one of {list(MULTIPROCESS_MODES)}, "
            f"got {mode!r}"
        )
    if mode != "sum" and kind is not Kind.GAUGE:
        raise DeclarationError(
            f"metric {metric!r}: only gauges take a multiprocess_mode "
            "(counters and histograms of all workers are summed)"
        )
    if mode == "worker" and "worker" in label_names:
        raise DeclarationError(
            f"metric {metric!r}: multiprocess_mode 'worker' adds a 'worker' label, "
            "which the metric already has"
        )


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_safe(text: str) -> str:
    """``text`` with every lone surrogate (what ``os.fsdecode`` makes of undecodable bytes)
    replaced by U+FFFD, so it encodes as UTF-8 in every exposition and line."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def validate_metric_name(name: object) -> None:
    if not isinstance(name, str) or not METRIC_NAME_RE.match(name):
        raise DeclarationError(
            f"invalid metric name {name!r}: it must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        )


def validate_label_names(metric: str, names: Sequence[object], kind: Kind) -> None:
    seen: set[object] = set()
    for label in names:
        if not isinstance(label, str) or not LABEL_NAME_RE.match(label):
            raise DeclarationError(
                f"metric {metric!r}: invalid label name {label!r}: "
                "it must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if label.startswith("__"):
            raise DeclarationError(
                f"metric {metric!r}: label name {label!r} starts with '__', "
                "which Prometheus reserves for internal use"
            )
        if label == "le" and kind.has_buckets:
            raise DeclarationError(
                f"metric {metric!r}: label name 'le' is reserved on histograms for bucket bounds"
            )
        if label in seen:
            raise DeclarationError(f"metric {metric!r}: label {label!r} is listed twice")
        seen.add(label)


def validate_buckets(metric: str, buckets: Sequence[object]) -> tuple[float, ...]:
    """Buckets must be finite numbers in strictly increasing order; +Inf is always implicit."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        raise DeclarationError(f"metric {metric!r}: buckets must be a list of numbers")
    if not buckets:
        raise DeclarationError(f"metric {metric!r}: buckets must not be empty")
    bounds: list[float] = []
    for bound in buckets:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise DeclarationError(f"metric {metric!r}: bucket {bound!r} is not a number")
        if not math.isfinite(bound):
            raise DeclarationError(
                f"metric {metric!r}: bucket {bound!r} is not finite (the +Inf bucket is implicit)"
            )
        if bounds and bound <= bounds[-1]:
            raise DeclarationError(
                f"metric {metric!r}: buckets must be strictly increasing, "
                f"but {bound!r} follows {bounds[-1]!r}"
            )
        bounds.append(float(bound))
    return tuple(bounds)
