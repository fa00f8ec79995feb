"""The Prometheus text (0.0.4) and OpenMetrics expositions, written straight from the series.

prometheus-client builds a metric family object and a sample per line at every scrape,
then formats each label set again: ~190 ms for 10,000 counters. Here the text of every
series' name and labels is made once and cached in the writer, so a render only formats
the values and joins strings. The bytes are prometheus-client's (``generate_latest`` of both
formats, without ``_created`` samples), with one exception noted in :class:`ExpositionWriter`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar, cast

import attrs

from metricsfacade import forking
from metricsfacade.spec import Kind
from metricsfacade.store import HistogramReading

#: The Prometheus text format, what prometheus-client serves when nothing better is asked.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: OpenMetrics asked for without a version. prometheus-client 0.17-0.19 answer any OpenMetrics
#: request with ``version=0.0.1``, 0.20-0.22 with this; 0.23 on echo a version >= 1.0.0.
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_OPENMETRICS = "application/openmetrics-text"
#: The escaping schemes prometheus-client echoes back. "dots" is left out on purpose: it
#: rewrites every "_" in names, which this writer does not do (see negotiate()).
_ESCAPINGS = frozenset(("underscores", "allow-utf-8", "values"))
_SPECIAL_FLOATS = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
#: Go's exponents for the values repr writes with 7 to 16 digits before the point
_EXPONENTS = tuple(f"e+{digits - 1:02d}" for digits in range(7, 17))
_LABEL_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})
_TEXT_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})
#: A render drops the writer's cache when it holds more than twice the entries the render
#: used, plus this: series come and go, and a cache sized for every series ever seen leaks.
_CACHE_SLACK = 256


@attrs.frozen
class Family:
    """One metric and its series, as the store or a multi-process merger reads them."""

    #: for counters the name without "_total" (``MetricSpec.key``), else ``spec.name``
    name: str
    kind: Kind
    help: str
    #: the metric's own label names; the writer puts the common labels before them
    label_names: tuple[str, ...]
    #: (label values, value): a float for counters and gauges, else a HistogramReading
    series: Sequence[tuple[tuple[str, ...], float | HistogramReading]]


def format_float(value: float) -> str:
    """``value`` as prometheus-client's ``floatToGoString`` writes it: Go's +Inf, -Inf and NaN,
    and Go's exponent for positive values from 1e+06 (repr switches only at 1e+16)."""
    text = repr(float(value))
    dot = text.find(".")
    if 0 < dot < 7:
        return text
    if dot < 0:  # inf, nan, or an exponent repr already chose
        return _SPECIAL_FLOATS.get(text, text)
    if text[0] == "-":  # prometheus-client only changes positive values
        return text
    # 1e+06 <= value < 1e+16: one digit before the point, no trailing zero after it
    whole, fraction = text[1:dot], text[dot + 1 :]
    decimals = whole.rstrip("0") if fraction == "0" else whole + fraction
    exponent = _EXPONENTS[dot - 7]
    return f"{text[0]}.{decimals}{exponent}" if decimals else f"{text[0]}{exponent}"


def _format_count(count: int) -> str:
    """A bucket count as prometheus-client writes it (a float): an int below 1e+06 is "n.0"
    (three times as fast as formatting the float); a float count from a merger is formatted."""
    if count.__class__ is int and 0 <= count < 1_000_000:
        return f"{count}.0"
    return format_float(count)


def negotiate(accept: str | None) -> tuple[bool, str]:
    """(openmetrics?, content type) for an Accept header, as prometheus-client 0.26's
    ``choose_encoder`` decides: the first OpenMetrics entry with no version or one >= 1.0.0,
    or text/plain with a version >= 1.0.0, wins (q-values are ignored); else text 0.0.4.

    Two departures, both where prometheus-client fails or would contradict our output: a
    version it cannot compare (``version=abc``, where it raises TypeError) makes the entry
    unacceptable, and ``escaping=dots`` is answered as ``underscores``, which is what the
    body is (legacy names are the same under underscores, values and allow-utf-8)."""
    for entry in (accept or "").split(","):
        params = entry.split(";")
        media = params[0].strip()
        if media not in (_OPENMETRICS, "text/plain"):
            continue
        version = _parameter(params, "version")
        escaping = _parameter(params, "escaping")
        if escaping not in _ESCAPINGS:
            escaping = "underscores"
        if media == _OPENMETRICS:
            if not version:
                return True, OPENMETRICS_CONTENT_TYPE
            if _version_at_least_1(version):
                return (
                    True,
                    f"{_OPENMETRICS}; version={version}; charset=utf-8; escaping={escaping}",
                )
        elif version and _version_at_least_1(version):
            return False, f"text/plain; version=1.0.0; charset=utf-8; escaping={escaping}"
    return False, TEXT_CONTENT_TYPE


def _parameter(params: list[str], key: str) -> str:
    """The first ``key=value`` parameter's value, unstripped, as prometheus-client reads it."""
    for param in params:
        name, equals, value = param.strip().partition("=")
        if equals and name == key:
            return value
    return ""


def _version_at_least_1(version: str) -> bool:
    """prometheus-client's ``parse_version(version) >= (1, 0, 0)``: int() of each dotted part,
    compared as tuples; a part that is not a number where it decides counts as too old."""
    for part, floor in zip(version.split("."), (1, 0, 0), strict=False):
        try:
            number = int(part)
        except ValueError:
            return False
        if number != floor:
            return number > floor
    return version.count(".") >= 2


@attrs.frozen
class _Layout:
    """What every line of a family shares, worked out once: its HELP and TYPE lines in both
    formats, its sample name, and its labels in prometheus-client's order, sorted by name
    (a name given twice keeps its last value, as in the dict prometheus-client builds)."""

    text_headers: str
    openmetrics_headers: str
    #: ``name_total`` for counters, else the name (histograms add their suffixes)
    sample_name: str
    #: how many label values each series has (the common labels' come first)
    label_count: int
    #: (index in common + own label values, ``name="``) for every label, in order
    labels: tuple[tuple[int, str], ...]
    #: the same for a histogram's bucket lines, whose le label goes between these two
    before_le: tuple[tuple[int, str], ...]
    after_le: tuple[tuple[int, str], ...]


class _Sample:
    """A counter's or gauge's series: its line for the value last rendered. A value is
    formatted again only when the store holds another float object: most series do not
    change between two scrapes, and a kept reference means no new float can share its id."""

    __slots__ = ("line", "prefix", "value")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # ``name_total{labels} ``
        self.line = ""
        self.value: float | None = None


@attrs.frozen
class _HistogramSeries:
    """One histogram series' line texts, for the bucket bounds they were made for."""

    bounds: tuple[float, ...]
    #: ``name_bucket{...le="..."...} `` per bucket, +Inf last
    buckets: tuple[str, ...]
    #: ``name_count{...} `` and ``name_sum{...} ``, or "" when prometheus-client leaves them
    #: out (the lowest bound is negative, so the sum may go down)
    count: str
    sum: str


_Entry = TypeVar("_Entry", _Sample, _HistogramSeries)


class _CachedFamily(Generic[_Entry]):
    """A family's layout and the texts of the series rendered so far."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.series: dict[tuple[str, ...], _Entry] = {}


_FamilyKey = tuple[str, Kind, str, tuple[str, ...]]


class ExpositionWriter:
    """Renders families in either format, caching every series' label text between renders.

    One writer serves one exposition: the cache is dropped when it holds far more series than
    a render used, so rendering disjoint subsets with one writer would rebuild it each time.

    The one difference from prometheus-client 0.26: a name with a colon keeps it in
    OpenMetrics sample lines, as in its HELP and TYPE lines. prometheus-client (0.23 on) turns
    it into "_" in sample lines only under ``escaping=underscores``, its default, so strict
    parsers see samples without a family (client_python issue #1177); under
    ``escaping=allow-utf-8``, which Prometheus 3 asks for, it writes what this writer writes.
    """

    def __init__(self, common_labels: Mapping[str, str]) -> None:
        self._common_names = tuple(common_labels)
        self._common_values = tuple(common_labels.values())
        self._lock = threading.Lock()
        self._scalars: dict[_FamilyKey, _CachedFamily[_Sample]] = {}
        self._histograms: dict[_FamilyKey, _CachedFamily[_HistogramSeries]] = {}
        self._le_texts: dict[tuple[float, ...], tuple[str, ...]] = {}
        self._cached = 0
        forking.LOCKS.add(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have been rendering

    @property
    def cached_entries(self) -> int:
        """How many families, series and bucket bound texts the cache holds (bounded: see
        render)."""
        return self._cached

    def render(self, families: Iterable[Family], openmetrics: bool) -> bytes:
        """The exposition of ``families``, in OpenMetrics or the text format 0.0.4."""
        with self._lock:  # one render at a time keeps the cache and its count consistent
            parts: list[str] = []
            used = 0
            for family in families:
                used += 1 + len(family.series)
                if family.kind.has_buckets:
                    self._render_histogram(family, openmetrics, parts)
                else:
                    self._render_scalar(family, openmetrics, parts)
            if openmetrics:
                parts.append("# EOF\n")
            if self._cached > 2 * used + _CACHE_SLACK:
                self._scalars.clear()
                self._histograms.clear()
                self._le_texts.clear()
                self._cached = 0
            return "".join(parts).encode("utf-8")

    def _render_scalar(self, family: Family, openmetrics: bool, parts: list[str]) -> None:
        cached = self._cached_family(self._scalars, family)
        layout = cached.layout
        parts.append(layout.openmetrics_headers if openmetrics else layout.text_headers)
        get = cached.series.get
        append = parts.append
        for values, value in cast(Sequence[tuple[tuple[str, ...], float]], family.series):
            sample = get(values) or self._new_sample(cached, values)
            if sample.value is not value:
                sample.value = value
                sample.line = f"{sample.prefix}{format_float(value)}\n"
            append(sample.line)

    def _new_sample(self, cached: _CachedFamily[_Sample], values: tuple[str, ...]) -> _Sample:
        layout = cached.layout
        labels = _label_list(layout.labels, self._label_values(layout, values))
        sample = cached.series[values] = _Sample(f"{layout.sample_name}{_braced(labels)} ")
        self._cached += 1
        return sample

    def _render_histogram(self, family: Family, openmetrics: bool, parts: list[str]) -> None:
        cached = self._cached_family(self._histograms, family)
        layout = cached.layout
        parts.append(layout.openmetrics_headers if openmetrics else layout.text_headers)
        append = parts.append
        for values, reading in cast(
            Sequence[tuple[tuple[str, ...], HistogramReading]], family.series
        ):
            lines = cached.series.get(values)
            bounds = reading.bounds
            if lines is None or (lines.bounds is not bounds and lines.bounds != bounds):
                lines = self._histogram_series(cached, values, bounds)
            running = 0
            for prefix, count in zip(lines.buckets, reading.counts, strict=True):
                running += count
                append(f"{prefix}{_format_count(running)}\n")
            if lines.count:
                append(f"{lines.count}{_format_count(running)}\n")
                append(f"{lines.sum}{format_float(reading.sum)}\n")

    def _histogram_series(
        self,
        cached: _CachedFamily[_HistogramSeries],
        values: tuple[str, ...],
        bounds: tuple[float, ...],
    ) -> _HistogramSeries:
        layout = cached.layout
        name = layout.sample_name
        label_values = self._label_values(layout, values)
        before = _label_list(layout.before_le, label_values)
        after = _label_list(layout.after_le, label_values)
        head = f'{name}_bucket{{{before}{"," if before else ""}le="'
        tail = f'"{"," if after else ""}{after}}} '
        buckets = tuple(f"{head}{le}{tail}" for le in self._le(bounds))
        if bounds and bounds[0] < 0:
            count = total = ""
        else:
            labels = _braced(_label_list(layout.labels, label_values))
            count, total = f"{name}_count{labels} ", f"{name}_sum{labels} "
        if values not in cached.series:
            self._cached += 1
        lines = cached.series[values] = _HistogramSeries(bounds, buckets, count, total)
        return lines

    def _le(self, bounds: tuple[float, ...]) -> tuple[str, ...]:
        texts = self._le_texts.get(bounds)
        if texts is None:
            texts = self._le_texts[bounds] = (*map(format_float, bounds), "+Inf")
            self._cached += 1
        return texts

    def _cached_family(
        self, families: dict[_FamilyKey, _CachedFamily[_Entry]], family: Family
    ) -> _CachedFamily[_Entry]:
        key = (family.name, family.kind, family.help, family.label_names)
        cached = families.get(key)
        if cached is None:
            cached = families[key] = _CachedFamily(self._layout(family))
            self._cached += 1
        return cached

    def _layout(self, family: Family) -> _Layout:
        name = family.name
        if family.kind is Kind.COUNTER:
            kind, sample_name = "counter", f"{name}_total"
        else:
            kind, sample_name = ("histogram" if family.kind.has_buckets else "gauge"), name
        text_help = family.help.translate(_TEXT_HELP_ESCAPES)
        openmetrics_help = family.help.translate(_LABEL_VALUE_ESCAPES)
        # a dict keeps the last index of a name given twice, as prometheus-client's does
        last = {label: index for index, label in enumerate(self._common_names + family.label_names)}
        order = sorted(last)
        return _Layout(
            # the text format names a counter's family name_total, and keeps quotes in help
            f"# HELP {sample_name} {text_help}\n# TYPE {sample_name} {kind}\n",
            f"# HELP {name} {openmetrics_help}\n# TYPE {name} {kind}\n",
            sample_name,
            len(family.label_names),
            tuple((last[label], f'{label}="') for label in order),
            # the bucket label replaces a label named le
            tuple((last[label], f'{label}="') for label in order if label < "le"),
            tuple((last[label], f'{label}="') for label in order if label > "le"),
        )

    def _label_values(self, layout: _Layout, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != layout.label_count:
            raise ValueError(
                f"{layout.sample_name}: {len(values)} label values {values!r} "
                f"for {layout.label_count} labels"
            )
        return self._common_values + values


def _label_list(labels: tuple[tuple[int, str], ...], values: tuple[str, ...]) -> str:
    """``a="x",b="y"``, values escaped."""
    return ",".join(
        [f'{lead}{values[index].translate(_LABEL_VALUE_ESCAPES)}"' for index, lead in labels]
    )


def _braced(labels: str) -> str:
    """A label list in braces, or nothing for no labels."""
    return f"{{{labels}}}" if labels else ""
