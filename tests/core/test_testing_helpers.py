"""MetricsMock and the metrics_mock fixture: assertions pass on the truth, fail readably."""

from __future__ import annotations

import pytest
from support import require_module

import metricsfacade as mf
from metricsfacade.testing import MetricsMock

require_module("prometheus_client")
from prometheus_client import REGISTRY, Counter  # noqa: E402


@pytest.fixture
def recorded():
    facade = mf.Metrics()
    with MetricsMock(facade) as mock:
        requests = facade.counter("demo_requests_total", "Requests", labels=["method"])
        requests.labels("ping").inc(2)
        requests.labels("call").inc()
        facade.gauge("demo_in_flight", "In flight").set(4)
        facade.histogram("demo_size_bytes", "Sizes", buckets=[10]).observe(3)
        yield mock


def test_assertions_accept_what_was_recorded(recorded):
    recorded.assert_counter("demo_requests_total", {"method": "ping"}, 2)
    recorded.assert_counter("demo_requests_total", None, 3)  # summed over series
    recorded.assert_gauge("demo_in_flight", {}, 4)
    recorded.assert_observed("demo_size_bytes", {}, count=1, sum=3, values=[3])
    recorded.assert_observed("demo_size_bytes")


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            lambda m: m.assert_counter("demo_requests_total", {"method": "ping"}, 5),
            'expected counter demo_requests_total{method="ping"} == 5, but it is 2',
        ),
        (lambda m: m.assert_counter("demo_requests_total", {"method": "nope"}, 1), "there is none"),
        (lambda m: m.assert_counter("demo_in_flight", {}, 4), "it is a gauge"),
        (lambda m: m.assert_gauge("demo_missing", {}, 1), "a gauge named 'demo_missing'"),
        (lambda m: m.assert_observed("demo_size_bytes", {}, count=2), "observed 1 times"),
        (lambda m: m.assert_observed("demo_size_bytes", {}, values=[4]), "observed [3]"),
        (lambda m: m.assert_not_recorded("demo_requests_total"), "nothing recorded"),
    ],
)
def test_failures_say_what_differs_and_list_the_records(recorded, check, message):
    with pytest.raises(AssertionError) as caught:
        check(recorded)
    text = str(caught.value)
    assert message in text
    assert 'counter demo_requests_total{method="call"} = 1' in text
    assert "gauge demo_in_flight{} = 4" in text


def test_mock_restores_the_previous_configuration():
    facade = mf.Metrics({"port": None, "backends": ["memory"], "cardinality_limit": 7}, environ={})
    before = facade.backend("memory")
    with MetricsMock(facade, strict=True) as mock:
        assert mock.backend is not before
        assert facade.config.strict is True
        assert facade.config.cardinality_limit == 7
    assert facade.config.strict is False
    assert facade.config.backends == ("memory",)
    facade.close()


def test_fixture_captures_metrics_declared_on_the_global_facade(metrics_mock):
    mf.gauge("demo_fixture_level", "Level").set(9)
    metrics_mock.assert_gauge("demo_fixture_level", {}, 9)
    assert metrics_mock.facade is mf.get_metrics()


def test_global_registry_option_serves_host_metrics_too():
    host = Counter("host_app_jobs_total", "A metric of the host application")
    host.inc()
    try:
        config = {"port": None, "backends": ["prometheus"], "prometheus": {"registry": "global"}}
        with mf.Metrics(config, environ={}) as m:
            m.counter("demo_requests_total", "Requests").inc()
            text = m.backend("prometheus").render(None)[0].decode()
            assert "host_app_jobs_total 1.0" in text
            assert "demo_requests_total 1.0" in text
            assert "python_info" in text  # prometheus-client's default collectors
        own = mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={})
        own_text = own.backend("prometheus").render(None)[0].decode()
        assert "host_app_jobs_total" not in own_text
        assert "python_info" not in own_text
        own.close()
        assert REGISTRY.get_sample_value("demo_requests_total") is None, "unregistered at close"
    finally:
        REGISTRY.unregister(host)


def test_a_mock_starts_empty_and_leaves_the_applications_values_alone():
    """Values survive a re-configure, but not into a mock: a test sees only its own
    recordings, and the application's series afterwards hold only the application's."""
    facade = mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={})
    try:
        requests = facade.counter("demo_requests_total", "Requests")
        requests.inc(5)
        with MetricsMock(facade) as mock:
            mock.assert_not_recorded("demo_requests_total")
            requests.inc()
            mock.assert_counter("demo_requests_total", {}, 1)
        exposition = facade.backend("prometheus").render(None)[0].decode()
        assert "demo_requests_total 5.0" in exposition
        requests.inc()
        exposition = facade.backend("prometheus").render(None)[0].decode()
        assert "demo_requests_total 6.0" in exposition
    finally:
        facade.close()
