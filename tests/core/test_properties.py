"""Hypothesis properties: the memory backend and the parsed Prometheus exposition always agree,
and name validation accepts exactly the Prometheus grammar."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require_module

import metricsfacade as mf
from metricsfacade.spec import Kind, make_spec

require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

label_values = st.text(max_size=6)  # any Unicode: quotes, backslashes, newlines included
amounts = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.integers(0, 1000)
levels = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
operation = st.one_of(
    st.tuples(st.just("inc"), label_values, amounts),
    st.tuples(st.just("set"), label_values, levels),
    st.tuples(st.just("add"), label_values, levels),
    st.tuples(st.just("observe"), label_values, levels),
)


def _exposed(m: mf.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.backend("prometheus").render(None)[0].decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, _present(sample.labels))] = sample.value
    return samples


def _present(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """In Prometheus an empty label value is the same as no label."""
    return tuple(sorted((name, value) for name, value in labels.items() if value != ""))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40))
def test_memory_and_prometheus_exposition_agree(operations):
    config = {"port": None, "backends": ["memory", "prometheus"]}
    with mf.Metrics(config, environ={}) as m:
        counter = m.counter("p_requests_total", "c", labels=["k"])
        gauge = m.gauge("p_level", "g", labels=["k"])
        histogram = m.histogram("p_size", "h", labels=["k"], buckets=[0, 1.5, 100])
        for kind, label, value in operations:
            if kind == "inc":
                counter.labels(label).inc(value)
            elif kind == "set":
                gauge.labels(label).set(value)
            elif kind == "add":
                gauge.labels(label).inc(value)
            else:
                histogram.labels(label).observe(value)
        exposed = _exposed(m)
        for record in m.backend("memory").records():
            labels = _present(record.labels)
            if record.kind is Kind.HISTOGRAM:
                reading = record.histogram
                assert exposed[("p_size_count", labels)] == reading.count
                assert math.isclose(
                    exposed[("p_size_sum", labels)], reading.sum, rel_tol=1e-9, abs_tol=1e-6
                )
                for bound, cumulative in reading.cumulative():
                    le = "+Inf" if bound == math.inf else repr(float(bound))
                    bucket_labels = tuple(sorted((*labels, ("le", le))))
                    assert exposed[("p_size_bucket", bucket_labels)] == cumulative
            else:
                exposed_value = exposed[(record.name, labels)]  # counters end in _total
                assert math.isclose(exposed_value, record.value, rel_tol=1e-9, abs_tol=1e-6)


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@given(st.from_regex(METRIC_NAME, fullmatch=True))
def test_every_valid_metric_name_is_accepted(name):
    assert make_spec(name, "h", Kind.GAUGE).name == name


@given(st.text(max_size=12).filter(lambda name: not METRIC_NAME.fullmatch(name)))
def test_every_invalid_metric_name_is_rejected(name):
    with pytest.raises(mf.DeclarationError, match="invalid metric name"):
        make_spec(name, "h", Kind.GAUGE)


@given(st.from_regex(LABEL_NAME, fullmatch=True).filter(lambda n: not n.startswith("__")))
def test_every_valid_label_name_is_accepted(label):
    assert make_spec("m", "h", Kind.COUNTER, [label]).label_names == (label,)


@given(st.text(max_size=12).filter(lambda n: not LABEL_NAME.fullmatch(n) or n.startswith("__")))
def test_every_invalid_label_name_is_rejected(label):
    with pytest.raises(mf.DeclarationError, match="label name"):
        make_spec("m", "h", Kind.COUNTER, [label])
