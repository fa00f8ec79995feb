"""The exposition writer against prometheus-client itself.

Random families render byte for byte as prometheus-client's ``generate_latest`` writes them,
in the text format 0.0.4 and in OpenMetrics (families built as the backend builds them, so
without ``_created`` samples), on a fresh writer and again from its cache; Accept headers
negotiate as its ``choose_encoder`` decides; the cache is reused, and dropped when series go.

Where the installed prometheus-client differs from the writer (see metricsfacade/exposition.py),
the comparison follows the installed version, and each difference is pinned by a test of its own:

- prometheus-client < 0.26 writes exponents from 1e+10 to 1e+15 with a leading zero
  ("1e+010"); on those versions the strategies leave that range out.
- prometheus-client >= 0.23 turns a colon into "_" in OpenMetrics sample lines under its
  default escaping (client_python #1177); the writer keeps it, as under escaping=allow-utf-8,
  so OpenMetrics is compared with that escaping, and with the default one when no name has
  a colon.
- prometheus-client < 0.23 negotiates no version or escaping (it answers any OpenMetrics
  request with a fixed content type): the cross-check with ``choose_encoder`` needs >= 0.23.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require_module

from metricsfacade.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    ExpositionWriter,
    Family,
    format_float,
    negotiate,
)
from metricsfacade.spec import Kind
from metricsfacade.store import HistogramReading

require_module("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder, generate_latest  # noqa: E402
from prometheus_client.openmetrics import exposition as openmetrics  # noqa: E402
from prometheus_client.openmetrics.parser import text_string_to_metric_families  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

#: prometheus-client < 0.26 writes "1e+010" where Go (and 0.26) write "1e+10"
LEGACY_EXPONENT = floatToGoString(1e10) == "1e+010"
#: prometheus-client >= 0.23: generate_latest takes an escaping scheme, choose_encoder
#: negotiates versions and escaping
NEGOTIATES = "escaping" in inspect.signature(openmetrics.generate_latest).parameters

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- prometheus-client's rendering of the same families, built as the backend builds them ------


class FamiliesCollector:
    """A collector yielding prometheus-client's metric families for our families."""

    def __init__(self, families: Iterable[Family], common: Mapping[str, str]) -> None:
        self.families = list(families)
        self.common = dict(common)

    def collect(self) -> Iterator[Any]:
        for family in self.families:
            names = (*self.common, *family.label_names)
            metric: Any
            if family.kind is Kind.COUNTER:
                # CounterMetricFamily strips one "_total": this keeps family.name as it is
                metric = CounterMetricFamily(f"{family.name}_total", family.help, labels=names)
            elif family.kind is Kind.GAUGE:
                metric = GaugeMetricFamily(family.name, family.help, labels=names)
            else:
                metric = HistogramMetricFamily(family.name, family.help, labels=names)
            for label_values, value in family.series:
                values = (*self.common.values(), *label_values)
                if isinstance(value, HistogramReading):
                    buckets = [(floatToGoString(le), n) for le, n in value.cumulative()]
                    metric.add_metric(values, buckets, value.sum)
                else:
                    metric.add_metric(values, value)
            yield metric


def registry_of(families: Iterable[Family], common: Mapping[str, str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families, common))
    return registry


def client_openmetrics(registry: CollectorRegistry) -> bytes:
    """OpenMetrics as prometheus-client writes it with colons kept in sample lines."""
    if NEGOTIATES:
        return bytes(openmetrics.generate_latest(registry, escaping="allow-utf-8"))
    return bytes(openmetrics.generate_latest(registry))


def assert_renders_as_client(
    writer: ExpositionWriter, families: list[Family], common: Mapping[str, str]
) -> None:
    registry = registry_of(families, common)
    assert writer.render(families, openmetrics=False) == generate_latest(registry)
    rendered = writer.render(families, openmetrics=True)
    assert rendered == client_openmetrics(registry)
    if not any(":" in family.name for family in families):
        assert rendered == openmetrics.generate_latest(registry)


# -- strategies -------------------------------------------------------------------------------


def comparable(value: float) -> bool:
    """False for the floats the installed prometheus-client formats the old way."""
    return not (LEGACY_EXPONENT and 1e10 <= value < 1e16)


metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
label_names = st.sampled_from(["a", "env", "le", "method", "z", "_x"]) | st.from_regex(
    r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True
)
#: help texts and label values: backslashes, newlines, quotes and any UTF-8 character
texts = st.text(
    st.sampled_from(["\\", "\n", '"', "é", "☃", "\U0001f600", " ", "a", "{", "}", ","])
    | st.characters(codec="utf-8"),
    max_size=12,
)
notable_values = st.sampled_from([0.0, 1.0, 0.5, 1e6, 1234567.0, 1e10, 123456789012.5, 1e16, 1e21])
counter_values = (
    notable_values | st.floats(min_value=0, allow_nan=False, allow_infinity=False)
).filter(comparable)
gauge_values = (
    notable_values | st.sampled_from([-0.0, -1e6, math.inf, -math.inf, math.nan]) | st.floats()
).filter(comparable)
#: per-bucket counts; on old versions small enough that no cumulative count reaches 1e+10
bucket_counts = st.integers(0, 10**8 if LEGACY_EXPONENT else 2**62) | st.sampled_from(
    [0, 1, 999_999, 1_000_000]
)
bounds_lists = st.lists(
    (
        st.sampled_from([0.005, 0.1, 1.0, 2.5, 1e6, 1e12, -1.0])
        | st.floats(allow_nan=False, allow_infinity=False)
    ).filter(comparable),
    min_size=1,
    max_size=8,
    unique=True,
).map(lambda bounds: tuple(sorted(bounds)))


@st.composite
def histogram_readings(draw: st.DrawFn, bounds: tuple[float, ...] | None = None) -> Any:
    bounds = draw(bounds_lists) if bounds is None else bounds
    counts = tuple(draw(bucket_counts) for _ in range(len(bounds) + 1))
    total = draw(gauge_values)
    return HistogramReading(bounds, counts, total)


def values_of(kind: Kind, bounds: tuple[float, ...] | None = None) -> st.SearchStrategy[Any]:
    if kind is Kind.COUNTER:
        return counter_values
    if kind is Kind.GAUGE:
        return gauge_values
    # a histogram's series mostly share their bounds, as a metric's do
    return st.one_of(histogram_readings(bounds), histogram_readings())


@st.composite
def families(draw: st.DrawFn) -> Family:
    kind = draw(st.sampled_from(Kind))
    # "le" is refused on histograms at declaration (their buckets carry it)
    allowed = label_names.filter(lambda name: name != "le") if kind.has_buckets else label_names
    names = tuple(draw(st.lists(allowed, unique=True, max_size=3)))
    bounds = draw(bounds_lists)
    label_values = st.tuples(*[texts] * len(names))
    series = draw(
        st.lists(
            st.tuples(label_values, values_of(kind, bounds)),
            max_size=5,
            unique_by=lambda item: item[0],
        )
    )
    return Family(draw(metric_names), kind, draw(texts), names, series)


family_lists = st.lists(families(), max_size=6)
#: the config refuses a common label "le"
common_labels = st.dictionaries(label_names.filter(lambda name: name != "le"), texts, max_size=3)


# -- rendering -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(families=family_lists, common=common_labels)
def test_random_families_render_as_prometheus_client_does(
    families: list[Family], common: dict[str, str]
) -> None:
    writer = ExpositionWriter(common)
    assert_renders_as_client(writer, families, common)
    assert_renders_as_client(writer, families, common)  # from the cache


@PROPERTY_SETTINGS
@given(families=family_lists, common=common_labels, data=st.data())
def test_new_values_and_bounds_render_over_a_warm_cache(
    families: list[Family], common: dict[str, str], data: st.DataObject
) -> None:
    """The same series with other values (new float objects, maybe equal to the old ones)
    and histograms with other bounds: nothing stale comes out of the cache."""
    writer = ExpositionWriter(common)
    writer.render(families, openmetrics=False)
    changed = [
        attrs.evolve(
            family,
            series=[(values, data.draw(values_of(family.kind))) for values, _ in family.series],
        )
        for family in families
    ]
    assert_renders_as_client(writer, changed, common)


def test_a_zero_that_turns_negative_is_written_again() -> None:
    """Equal floats are not the same value to the exposition: 0.0 and -0.0."""
    writer = ExpositionWriter({})
    family = Family("level", Kind.GAUGE, "Level.", (), [((), 0.0)])
    assert writer.render([family], openmetrics=False).endswith(b"\nlevel 0.0\n")
    negative = attrs.evolve(family, series=[((), -0.0)])
    assert writer.render([negative], openmetrics=False).endswith(b"\nlevel -0.0\n")


def test_a_histogram_with_a_negative_bound_has_no_count_or_sum() -> None:
    reading = HistogramReading((-1.0, 1.0), (1, 0, 2), -4.0)
    families = [Family("delta", Kind.HISTOGRAM, "Delta.", (), [((), reading)])]
    writer = ExpositionWriter({})
    assert_renders_as_client(writer, families, {})
    assert writer.render(families, openmetrics=False) == (
        b"# HELP delta Delta.\n# TYPE delta histogram\n"
        b'delta_bucket{le="-1.0"} 1.0\ndelta_bucket{le="1.0"} 1.0\ndelta_bucket{le="+Inf"} 3.0\n'
    )


def test_a_colon_stays_in_openmetrics_sample_names() -> None:
    """prometheus-client >= 0.23 writes ``app_requests_total`` under ``# TYPE app:requests``
    with its default escaping, which parsers read as two families (client_python #1177)."""
    families = [Family("app:requests", Kind.COUNTER, "Requests.", (), [((), 1.0)])]
    rendered = ExpositionWriter({}).render(families, openmetrics=True).decode()
    assert rendered == (
        "# HELP app:requests Requests.\n# TYPE app:requests counter\n"
        "app:requests_total 1.0\n# EOF\n"
    )
    [parsed] = text_string_to_metric_families(rendered)
    assert (parsed.name, parsed.type) == ("app:requests", "counter")
    assert [(sample.name, sample.value) for sample in parsed.samples] == [
        ("app:requests_total", 1.0)
    ]


def test_label_values_that_do_not_match_the_label_names_are_refused() -> None:
    writer = ExpositionWriter({"env": "prod"})
    family = Family("requests", Kind.COUNTER, "Requests.", ("method",), [(("GET", "x"), 1.0)])
    with pytest.raises(ValueError, match="2 label values"):
        writer.render([family], openmetrics=False)


# -- floats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1, "1.0"),
        (0.005, "0.005"),
        (123456.5, "123456.5"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1000000.5, "1.0000005e+06"),
        (1e10, "1e+10"),
        (123456789012.5, "1.234567890125e+11"),
        (9999999999999998.0, "9.999999999999998e+15"),
        (1e16, "1e+16"),
        (-1234567.0, "-1234567.0"),
        (1e-05, "1e-05"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_floats_are_formatted_as_go_and_prometheus_client_do(value: float, text: str) -> None:
    assert format_float(value) == text


@given(st.floats() | st.integers(-(2**64), 2**64).map(float))
def test_floats_are_formatted_as_the_installed_prometheus_client_does(value: float) -> None:
    if comparable(value):
        assert format_float(value) == floatToGoString(value)
    else:  # prometheus-client < 0.26: the same digits, a zero more in the exponent
        assert floatToGoString(value) == re.sub(r"e\+(\d\d)$", r"e+0\1", format_float(value))


# -- negotiation -------------------------------------------------------------------------------

OPENMETRICS_1 = "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping="
TEXT_1 = "text/plain; version=1.0.0; charset=utf-8; escaping="
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)

NEGOTIATIONS = [
    (None, False, TEXT_CONTENT_TYPE),
    ("", False, TEXT_CONTENT_TYPE),
    ("*/*", False, TEXT_CONTENT_TYPE),
    ("application/json", False, TEXT_CONTENT_TYPE),
    ("text/plain", False, TEXT_CONTENT_TYPE),
    ("text/plain; version=0.0.4", False, TEXT_CONTENT_TYPE),
    ("text/plain;version=1.0.0", False, TEXT_1 + "underscores"),
    ("text/plain;version=1.0.0;escaping=allow-utf-8", False, TEXT_1 + "allow-utf-8"),
    ("application/openmetrics-text", True, OPENMETRICS_CONTENT_TYPE),
    ("application/openmetrics-text;version = 1.0.0", True, OPENMETRICS_CONTENT_TYPE),
    ("application/openmetrics-text;version=;escaping=values", True, OPENMETRICS_CONTENT_TYPE),
    (" application/openmetrics-text ; q=0.9", True, OPENMETRICS_CONTENT_TYPE),
    ("application/openmetrics-text; version=1.0.0", True, OPENMETRICS_1 + "underscores"),
    ("application/openmetrics-text;version=1.0.0;escaping=values", True, OPENMETRICS_1 + "values"),
    ("application/openmetrics-text;version=1.0.0;escaping=zz", True, OPENMETRICS_1 + "underscores"),
    (
        "application/openmetrics-text;version=2.0.0",
        True,
        "application/openmetrics-text; version=2.0.0; charset=utf-8; escaping=underscores",
    ),
    ("application/openmetrics-text;version=0.0.1", False, TEXT_CONTENT_TYPE),
    ("application/openmetrics-text;version=1.0", False, TEXT_CONTENT_TYPE),
    ("text/html,application/openmetrics-text;q=0.9", True, OPENMETRICS_CONTENT_TYPE),
    (
        "application/openmetrics-text;version=0.0.1,text/plain;version=1.0.0",
        False,
        TEXT_1 + "underscores",
    ),
    (PROMETHEUS_2_ACCEPT, True, OPENMETRICS_1 + "underscores"),
    (PROMETHEUS_3_ACCEPT, True, OPENMETRICS_1 + "allow-utf-8"),
]

#: Where the writer departs from prometheus-client 0.26 on purpose: it cannot write the dots
#: escaping, and a version prometheus-client cannot compare raises TypeError there.
DEPARTURES = [
    (
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        True,
        OPENMETRICS_1 + "underscores",
    ),
    ("text/plain;version=1.0.0;escaping=dots", False, TEXT_1 + "underscores"),
    ("application/openmetrics-text;version=abc", False, TEXT_CONTENT_TYPE),
    (
        "application/openmetrics-text;version=1.x,application/openmetrics-text",
        True,
        OPENMETRICS_CONTENT_TYPE,
    ),
]


@pytest.mark.parametrize(
    ("accept", "openmetrics_format", "content_type"), NEGOTIATIONS + DEPARTURES
)
def test_accept_headers_negotiate_as_prometheus_client_0_26_does(
    accept: str | None, openmetrics_format: bool, content_type: str
) -> None:
    assert negotiate(accept) == (openmetrics_format, content_type)


def client_negotiates(accept: str) -> tuple[bool, str]:
    """What the installed choose_encoder decides, with the writer's one escaping departure."""
    encoder, content_type = choose_encoder(accept)
    chosen = getattr(encoder, "func", encoder)  # a functools.partial with the escaping
    return chosen is openmetrics.generate_latest, re.sub(
        r"escaping=dots\Z", "escaping=underscores", content_type
    )


accept_entries = st.builds(
    lambda media, params: ";".join([media, *params]),
    st.sampled_from(
        ["application/openmetrics-text", " application/openmetrics-text", "text/plain", "*/*"]
    )
    | texts,
    st.lists(
        st.sampled_from(
            [
                "version=1.0.0",
                " version=2.0.0 ",
                "version=0.0.1",
                "version=0.0.4",
                "version=1.0",
                "version=10",
                "version=",
                "version=1.x",
                "version=2.x",
                "version = 1.0.0",
                "escaping=allow-utf-8",
                "escaping=underscores",
                "escaping=values",
                "escaping=dots",
                "escaping=zz",
                "q=0.5",
                "charset=utf-8",
            ]
        )
        | texts,
        max_size=3,
    ),
)
accept_headers = st.lists(accept_entries, max_size=4).map(",".join) | texts


@pytest.mark.skipif(not NEGOTIATES, reason="prometheus-client < 0.23 negotiates no version")
@pytest.mark.parametrize(("accept", "openmetrics_format", "content_type"), NEGOTIATIONS)
def test_typical_accept_headers_negotiate_as_the_installed_client_does(
    accept: str | None, openmetrics_format: bool, content_type: str
) -> None:
    assert client_negotiates(accept or "") == (openmetrics_format, content_type)


@pytest.mark.skipif(not NEGOTIATES, reason="prometheus-client < 0.23 negotiates no version")
@PROPERTY_SETTINGS
@given(accept_headers)
def test_any_accept_header_negotiates_as_the_installed_client_does(accept: str) -> None:
    ours = negotiate(accept)
    try:
        theirs = client_negotiates(accept)
    except TypeError:  # a version it cannot compare: the writer skips that entry instead
        return
    assert ours == theirs


# -- the cache ---------------------------------------------------------------------------------


class CountedValue(str):
    """A label value that counts how often it is escaped, i.e. how often its text is made."""

    escaped = 0

    def translate(self, table: Any) -> str:
        CountedValue.escaped += 1
        return super().translate(table)


def test_label_texts_are_made_once_across_renders() -> None:
    series = [((CountedValue(f"v{index}"),), float(index)) for index in range(50)]
    families = [
        Family("requests", Kind.COUNTER, "Requests.", ("path",), series),
        Family(
            "latency",
            Kind.HISTOGRAM,
            "Latency.",
            ("path",),
            [(values, HistogramReading((0.1, 1.0), (1, 2, 3), 4.5)) for values, _ in series],
        ),
    ]
    writer = ExpositionWriter({"env": "prod"})
    CountedValue.escaped = 0
    first = writer.render(families, openmetrics=False)
    made = CountedValue.escaped
    assert made >= 100
    assert writer.render(families, openmetrics=False) == first
    assert writer.render(families, openmetrics=True).startswith(b"# HELP requests Requests.")
    assert CountedValue.escaped == made
    assert writer.cached_entries == 2 + 100 + 1  # families, series, one bounds tuple


def test_the_cache_is_dropped_when_series_go_away() -> None:
    def family(first: int, count: int) -> Family:
        series = [((str(index),), 1.0) for index in range(first, first + count)]
        return Family("requests", Kind.COUNTER, "Requests.", ("id",), series)

    writer = ExpositionWriter({})
    writer.render([family(0, 5000)], openmetrics=False)
    assert writer.cached_entries == 5001
    writer.render([family(0, 10)], openmetrics=False)  # 4990 series gone
    assert writer.cached_entries <= 11
    sizes = []
    for round_ in range(100):  # series churn: 50 new ids each round
        families = [family(round_ * 50, 100)]
        assert_renders_as_client(writer, families, {})
        sizes.append(writer.cached_entries)
    assert max(sizes) <= 2 * 101 + 256
    assert min(sizes) > 0
