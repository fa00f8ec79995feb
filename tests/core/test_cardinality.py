"""The global series cap: overflow folding, self-metrics, exact existing series, bounded memory."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

import metricsfacade as mf
from metricsfacade.testing import MetricsMock

OVERFLOW = mf.OVERFLOW_LABEL_VALUE


@pytest.fixture
def capped():
    config = {"port": None, "backends": ["memory"], "cardinality_limit": 5}
    with mf.Metrics(config, environ={}) as m, MetricsMock(m) as mock:
        yield m, mock


def test_past_the_limit_new_label_sets_fold_into_one_overflow_series(capped, caplog):
    m, mock = capped
    requests = m.counter("demo_requests_total", "Requests", labels=["client", "method"])
    sizes = m.histogram("demo_size_bytes", "Sizes", labels=["client"], buckets=[10])
    for client in range(4):
        requests.labels(f"c{client}", "ping").inc()
    sizes.labels("c0").observe(1)  # the fifth series: the limit is reached
    with caplog.at_level(logging.WARNING, logger="metricsfacade"):
        for client in range(4, 10):
            requests.labels(f"c{client}", "ping").inc(2)
        sizes.labels("c9").observe(100)
        sizes.labels("c8").observe(100)
    mock.assert_counter("demo_requests_total", {"client": OVERFLOW, "method": OVERFLOW}, 12)
    mock.assert_counter(
        "metricsfacade_cardinality_overflow_total", {"metric": "demo_requests_total"}, 6
    )
    mock.assert_observed("demo_size_bytes", {"client": OVERFLOW}, count=2, sum=200)
    mock.assert_counter(
        "metricsfacade_cardinality_overflow_total", {"metric": "demo_size_bytes"}, 2
    )
    warnings = [r for r in caplog.records if "cardinality limit" in r.getMessage()]
    assert len(warnings) == 2, "one warning per metric"


def test_existing_series_keep_recording_exactly_past_the_limit(capped):
    m, mock = capped
    requests = m.counter("demo_requests_total", "Requests", labels=["client"])
    kept = requests.labels("c0")
    for client in range(20):
        requests.labels(f"c{client}").inc()
    for _ in range(7):
        kept.inc()
        requests.labels("c3").inc()
    mock.assert_counter("demo_requests_total", {"client": "c0"}, 8)
    mock.assert_counter("demo_requests_total", {"client": "c3"}, 8)
    mock.assert_counter("demo_requests_total", {"client": OVERFLOW}, 15)


def test_unlabeled_metrics_count_against_the_limit(capped):
    m, mock = capped
    for index in range(5):
        m.gauge(f"demo_gauge_{index}", "g").set(index)
    late = m.counter("demo_late_total", "declared past the limit", labels=["k"])
    late.labels("v").inc()
    mock.assert_counter("demo_late_total", {"k": OVERFLOW}, 1)
    mock.assert_gauge("demo_gauge_4", {}, 4)


def test_self_metrics_are_exempt_from_the_limit(capped):
    m, mock = capped
    requests = m.counter("demo_requests_total", "Requests", labels=["client"])
    for client in range(10):
        requests.labels(f"c{client}").inc()
    requests.labels("c0").inc(-1)  # a drop must still be counted, in its own series
    assert mock.dropped("demo_requests_total", "negative_value") == 1


def test_endless_distinct_values_do_not_grow_memory():
    config = {"port": None, "backends": ["memory"], "cardinality_limit": 1_000}
    with mf.Metrics(config, environ={}) as m:
        requests = m.counter("demo_requests_total", "Requests", labels=["client"])
        for client in range(2_000):  # fill the budget, then measure the steady state
            requests.labels(f"warm-{client}").inc()
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        for client in range(300_000):
            requests.labels(f"client-{client}").inc()
        after, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        memory = m.backend("memory")
        assert memory.value("demo_requests_total", {"client": OVERFLOW}) == 301_000
        assert len(requests._children) <= 1_000
        assert after - before < 256 * 1024, f"grew by {after - before} bytes"
