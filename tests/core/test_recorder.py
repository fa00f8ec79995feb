"""The recorder API contract: declaration, labels, recording, timers, strict mode, rebinding."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
import support
from support import require_module

import metricsfacade as mf
from metricsfacade.testing import MetricsMock

require_module("prometheus_client")
from metricsfacade.backends import prometheus  # noqa: E402, F401  (loaded here, evicted below)


@pytest.fixture
def m(facade: mf.Metrics) -> mf.Metrics:
    """This file's name for the shared memory facade (``mock`` is a MetricsMock on it)."""
    return facade


def test_counter_keyword_and_positional_labels_reach_the_same_series(m, mock):
    requests = m.counter("demo_requests_total", "Requests handled", labels=["method", "status"])
    requests.labels(method="ping", status="ok").inc()
    requests.labels("ping", "ok").inc(2)
    requests.labels(status="ok", method="ping").inc(0.5)
    mock.assert_counter("demo_requests_total", {"method": "ping", "status": "ok"}, 3.5)
    assert len(mock.records("demo_requests_total")) == 1


def test_gauge_inc_dec_set(m, mock):
    gauge = m.gauge("demo_in_flight", "In-flight requests")
    gauge.inc()
    gauge.inc(4)
    gauge.dec()
    mock.assert_gauge("demo_in_flight", {}, 4)
    gauge.set(-3)
    mock.assert_gauge("demo_in_flight", {}, -3)


def test_histogram_observations_land_in_the_right_buckets(m, mock):
    sizes = m.histogram("demo_size_bytes", "Sizes", labels=["method"], buckets=[100, 1000])
    for value in (100, 512, 5000, 1):
        sizes.labels("ping").observe(value)
    mock.assert_observed("demo_size_bytes", {"method": "ping"}, values=[1, 100, 512, 5000])
    (record,) = mock.records("demo_size_bytes")
    assert record.histogram is not None
    # le=100 holds 1 and 100 (bounds are inclusive), le=1000 holds 512, +Inf holds 5000
    assert record.histogram.cumulative() == [(100, 2), (1000, 3), (float("inf"), 4)]


def test_bound_child_is_cached_and_stays_valid(m, mock):
    requests = m.counter("demo_requests_total", "Requests", labels=["method"])
    child = requests.labels("ping")
    assert requests.labels("ping") is child
    assert requests.labels(method="ping") is child
    child.inc()
    child.inc()
    mock.assert_counter("demo_requests_total", {"method": "ping"}, 2)


def test_non_string_label_values_are_converted(m, mock):
    requests = m.counter("demo_requests_total", "Requests", labels=["status"])
    requests.labels(200).inc()
    requests.labels("200").inc()
    requests.labels(status=200).inc()
    mock.assert_counter("demo_requests_total", {"status": "200"}, 3)
    assert requests.labels(200) is requests.labels("200")


def test_timer_as_context_manager_async_context_manager_and_decorators(m, mock):
    latency = m.timer("demo_latency_seconds", "Latency", labels=["method"])
    child = latency.labels("ping")
    with child.time():
        pass

    @child.time()
    def handle(value: int) -> int:
        return value * 2

    @child.time()
    async def handle_async(value: int) -> int:
        await asyncio.sleep(0)
        return value + 1

    async def main() -> int:
        async with child.time():
            await asyncio.sleep(0.01)
        return await handle_async(1)

    assert handle(21) == 42
    assert asyncio.run(main()) == 2
    mock.assert_observed("demo_latency_seconds", {"method": "ping"}, count=4)
    observed = mock.records("demo_latency_seconds")[0].histogram
    assert observed is not None
    assert max(observed.values) >= 0.01  # the async with block slept 10 ms
    assert all(0 <= value < 5 for value in observed.values)


def test_timer_records_when_the_block_raises_and_the_exception_propagates(m, mock):
    latency = m.timer("demo_latency_seconds", "Latency")

    @latency.time()
    def fails() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        fails()
    with pytest.raises(ValueError, match="inner"), latency.time():
        raise ValueError("inner")
    mock.assert_observed("demo_latency_seconds", {}, count=2)


def test_redeclaring_returns_the_same_handle(m):
    first = m.counter("demo_requests_total", "Requests", labels=["method"])
    assert m.counter("demo_requests_total", "Other help text", labels=["method"]) is first
    assert m.counter("demo_requests", "Same series without _total", labels=["method"]) is first


@pytest.mark.parametrize(
    ("redeclare", "mentions"),
    [
        (lambda m: m.gauge("demo_x", "h", labels=["a"]), "gauge"),
        (lambda m: m.histogram("demo_x", "h", labels=["b"], buckets=[1, 2]), "labels [b]"),
        (lambda m: m.histogram("demo_x", "h", labels=["a"], buckets=[1, 3]), "buckets [1.0, 3.0]"),
    ],
)
def test_conflicting_declaration_names_both(m, redeclare, mentions):
    m.histogram("demo_x", "h", labels=["a"], buckets=[1, 2])
    with pytest.raises(mf.DeclarationError) as caught:
        redeclare(m)
    message = str(caught.value)
    assert mentions in message
    assert "histogram 'demo_x' (labels [a], buckets [1.0, 2.0])" in message


@pytest.mark.parametrize(
    ("declare", "fragment"),
    [
        (lambda m: m.counter("9starts_with_digit", "h"), "invalid metric name"),
        (lambda m: m.counter("has-dash", "h"), "invalid metric name"),
        (lambda m: m.counter("ok_total", "h", labels=["bad-label"]), "invalid label name"),
        (lambda m: m.counter("ok_total", "h", labels=["__reserved"]), "starts with '__'"),
        (lambda m: m.histogram("ok_hist", "h", labels=["le"]), "'le' is reserved"),
        (lambda m: m.counter("ok_total", "h", labels=["a", "a"]), "listed twice"),
        (lambda m: m.counter("ok_total", "h", labels="method"), "not the string"),
        (lambda m: m.histogram("ok_hist", "h", buckets=[2, 1]), "strictly increasing"),
        (lambda m: m.histogram("ok_hist", "h", buckets=[1, 1]), "strictly increasing"),
        (lambda m: m.histogram("ok_hist", "h", buckets=[]), "must not be empty"),
        (lambda m: m.histogram("ok_hist", "h", buckets=[1, float("inf")]), "not finite"),
        (lambda m: m.histogram("ok_hist", "h", buckets=[float("nan")]), "not finite"),
        (lambda m: m.histogram("ok_hist", "h", buckets=["1"]), "not a number"),
        (lambda m: m.counter("metricsfacade_mine_total", "h"), "reserved"),
    ],
)
def test_invalid_declarations_fail_with_a_clear_error(m, declare, fragment):
    with pytest.raises(mf.DeclarationError, match=fragment):
        declare(m)


def test_label_le_is_fine_on_counters(m, mock):
    m.counter("demo_le_total", "h", labels=["le"]).labels("x").inc()
    mock.assert_counter("demo_le_total", {"le": "x"}, 1)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (lambda c, g, h: c.labels("ping").inc(-1), "negative_value"),
        (lambda c, g, h: c.labels("ping").inc(float("nan")), "not_finite"),
        (lambda c, g, h: c.labels("ping").inc(float("inf")), "not_finite"),
        (lambda c, g, h: c.labels("ping").inc("1"), "invalid_value"),
        (lambda c, g, h: g.set(float("nan")), "not_finite"),
        (lambda c, g, h: g.inc(float("-inf")), "not_finite"),
        (lambda c, g, h: g.dec(float("nan")), "not_finite"),
        (lambda c, g, h: h.observe(float("nan")), "not_finite"),
        (lambda c, g, h: h.observe(None), "invalid_value"),
        (lambda c, g, h: c.inc(), "missing_label"),
        (lambda c, g, h: c.labels().inc(), "missing_label"),
        (lambda c, g, h: c.labels("a", "b").inc(), "unknown_label"),
        (lambda c, g, h: c.labels(method="a", other="b").inc(), "unknown_label"),
        (lambda c, g, h: c.labels(other="b").inc(), "unknown_label"),
        (lambda c, g, h: c.labels("a", method="a").inc(), "invalid_labels"),
        (lambda c, g, h: c.labels(["unhashable"]).inc(), "invalid_label_value"),
    ],
)
def test_bad_recordings_are_counted_and_dropped_never_raised(m, mock, record, reason, caplog):
    counter = m.counter("demo_requests_total", "Requests", labels=["method"])
    gauge = m.gauge("demo_in_flight", "In flight")
    histogram = m.histogram("demo_size_bytes", "Sizes")
    with caplog.at_level(logging.WARNING, logger="metricsfacade"):
        record(counter, gauge, histogram)
        record(counter, gauge, histogram)
    assert mock.dropped(reason=reason) == 2
    mock.assert_not_recorded("demo_requests_total")
    mock.assert_not_recorded("demo_size_bytes")
    assert len(caplog.records) == 1, "logged once per metric and reason"
    assert reason in caplog.text


def test_strict_mode_raises_record_errors():
    with mf.Metrics({"port": None, "backends": ["memory"], "strict": True}, environ={}) as m:
        counter = m.counter("demo_requests_total", "Requests", labels=["method"])
        with pytest.raises(mf.RecordError, match="inc\\(-1\\)"):
            counter.labels("ping").inc(-1)
        with pytest.raises(mf.RecordError, match="0 label values for labels"):
            counter.labels()
        with pytest.raises(mf.RecordError, match="unknown label"):
            counter.labels(method="x", status="y")


def test_a_fault_on_the_record_path_never_reaches_the_caller(m, mock):
    counter = m.counter("demo_requests_total", "Requests", labels=["method"])
    child = counter.labels("ping")

    def explode(_value: float) -> None:
        raise RuntimeError("store down")

    working = child._inc
    child._inc = explode
    child.inc()
    child._inc = working
    child.inc()
    mock.assert_counter("demo_requests_total", {"method": "ping"}, 1)
    assert mock.dropped("demo_requests_total", "backend_error") == 1


def test_metrics_declared_before_configure_bind_when_it_runs():
    facade = mf.Metrics()
    early = facade.counter("demo_early_total", "Declared at import time", labels=["kind"])
    child = early.labels("a")
    child.inc(5)  # unconfigured: a silent no-op
    facade.configure({"port": None, "backends": ["memory"]}, environ={})
    try:
        child.inc()
        early.labels("b").inc(2)
        memory = facade.backend("memory")
        assert memory.value("demo_early_total", {"kind": "a"}) == 1
        assert memory.value("demo_early_total", {"kind": "b"}) == 2
    finally:
        facade.close()
    child.inc()  # closed: a no-op again, never an error


def test_global_facade_and_module_level_declarations(metrics_mock):
    handled = mf.counter("demo_global_total", "Declared on the global facade", labels=["k"])
    assert mf.get_metrics().counter("demo_global_total", "x", labels=["k"]) is handled
    handled.labels("v").inc()
    metrics_mock.assert_counter("demo_global_total", {"k": "v"}, 1)


def test_configure_returns_the_global_facade():
    configured = mf.configure({"port": None, "backends": ["memory"]}, environ={})
    try:
        assert configured is mf.get_metrics()
        assert configured.config is not None
        assert configured.config.backends == ("memory",)
    finally:
        configured.close()
    assert mf.get_metrics().config is None


def test_disabled_facade_records_nothing_and_serves_nothing():
    with mf.Metrics({"enabled": False, "backends": ["memory"]}, environ={}) as m:
        counter = m.counter("demo_requests_total", "Requests", labels=["method"])
        counter.labels("ping").inc()
        assert m.endpoint_url is None
        with pytest.raises(KeyError, match="not configured"):
            m.backend("memory")


def test_reconfigure_keeps_the_values_recorded_so_far(m):
    counter = m.counter("demo_requests_total", "Requests", labels=["method"])
    child = counter.labels("ping")
    child.inc()
    first_memory = m.backend("memory")
    m.configure({"port": None, "backends": ["memory"]}, environ={})
    assert m.backend("memory") is not first_memory
    child.inc(3)
    assert m.backend("memory").value("demo_requests_total", {"method": "ping"}) == 4


def test_histogram_without_buckets_uses_configured_default():
    config = {"port": None, "backends": ["memory"], "histogram_buckets": [1, 2, 3]}
    with mf.Metrics(config, environ={}) as m, MetricsMock(m) as mock:
        defaulted = m.histogram("demo_default_bytes", "h")
        explicit = m.histogram("demo_explicit_bytes", "h", buckets=[10])
        defaulted.observe(2)
        explicit.observe(2)
        by_name = {record.name: record.histogram for record in mock.records()}
    assert by_name["demo_default_bytes"].bounds == (1, 2, 3)
    assert by_name["demo_explicit_bytes"].bounds == (10,)


def test_metric_labels_may_not_repeat_a_common_label():
    config = {"port": None, "backends": ["memory"], "common_labels": {"service": "x"}}
    with mf.Metrics(config, environ={}) as m, pytest.raises(mf.DeclarationError, match="common"):
        m.counter("demo_requests_total", "h", labels=["service"])
    later = mf.Metrics()
    later.counter("demo_requests_total", "h", labels=["service"])
    with pytest.raises(mf.DeclarationError, match="common label"):
        later.configure(config, environ={})


def test_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "metricsfacade.backends.prometheus")
    with pytest.raises(mf.MissingExtraError, match=r"pip install 'metricsfacade\[prometheus\]'"):
        mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={})


def test_a_backend_that_cannot_be_built_leaves_the_old_setup_recording(m, monkeypatch):
    counter = m.counter("demo_requests_total", "Requests")
    for module in ("datadog", "datadog.dogstatsd", "datadog.dogstatsd.base"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "metricsfacade.backends.datadog", raising=False)
    with pytest.raises(mf.MissingExtraError, match=r"metricsfacade\[datadog\]"):
        m.configure({"port": None, "backends": ["memory", "datadog"]}, environ={})
    counter.inc()
    assert m.backend("memory").value("demo_requests_total") == 1


def test_a_timer_decorating_a_function_before_configure_records_once_configured():
    """The README's library example: a timer declared and applied at import time, the
    facade configured later (it once kept its pre-configure no-op forever)."""
    facade = mf.Metrics()
    timer = facade.timer("x_seconds", "x", labels=["m"])

    @timer.labels("a").time()
    def timed() -> None:
        pass

    observe = timer.labels("b").observe  # a bound method kept by the user
    try:
        facade.configure({"port": 0}, environ={})
        timed()
        timed()
        observe(0.5)
        text = support.scrape(f"{facade.endpoint_url}/metrics")
        assert 'x_seconds_count{m="a"} 2.0' in text
        assert 'x_seconds_count{m="b"} 1.0' in text
    finally:
        facade.close()


def test_a_second_configure_keeps_counter_values_in_the_exposition():
    facade = mf.Metrics({"port": 0}, environ={})
    try:
        facade.counter("keep_total", "k").inc(5)
        assert "keep_total 5.0" in support.scrape(f"{facade.endpoint_url}/metrics")
        facade.configure({"port": 0, "common_labels": {}}, environ={})
        assert "keep_total 5.0" in support.scrape(f"{facade.endpoint_url}/metrics")
        facade.counter("keep_total", "k").inc()
        assert "keep_total 6.0" in support.scrape(f"{facade.endpoint_url}/metrics")
        facade.close()
        facade.configure({"port": 0}, environ={})  # closed, then configured again
        assert "keep_total 6.0" in support.scrape(f"{facade.endpoint_url}/metrics")
    finally:
        facade.close()
