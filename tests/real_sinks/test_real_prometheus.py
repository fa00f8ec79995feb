"""metricsfacade against a real Prometheus server and promtool (no mocks).

One Prometheus server (per module) scrapes two facades: ``plain`` and ``labeled`` (with a
common label). Its first scrape lands about 5-6 s after start; every other check here is
fast. Missing executables skip these tests, or fail them under ``REQUIRE_REAL_SINKS=1``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import require_module, sinks

import metricsfacade as mf

require_module("prometheus_client")
from prometheus_client.openmetrics.parser import text_string_to_metric_families  # noqa: E402

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
HISTOGRAM_OBSERVATIONS = (0.05, 0.5, 5.0)

ServeFacade = Callable[..., mf.Metrics]


def start_facade(**config: Any) -> mf.Metrics:
    """A facade with only the Prometheus backend, serving on a free loopback port, for the
    module-scoped fixture (the ``serve_facade`` fixture is per test)."""
    return mf.Metrics({"port": 0, "backends": ["prometheus"], **config}, environ={})


def fetch_exposition(metrics: mf.Metrics, accept: str | None = None) -> tuple[str, bytes]:
    """GET the facade's /metrics: (content type, body); ``support.scrape`` gives only the text,
    and these tests check the content type too."""
    assert metrics.endpoint_url is not None, "the facade is not serving"
    headers = {"Accept": accept} if accept else {}
    status, response_headers, body = sinks.http_get(f"{metrics.endpoint_url}/metrics", headers)
    assert status == 200, f"GET /metrics answered {status}: {body!r}"
    return response_headers.get("Content-Type", ""), body


# -- one Prometheus server scraping two facades ---------------------------------------------


class Scraped:
    def __init__(self, prom: sinks.PrometheusServer, timed_block_bound: float) -> None:
        self.prom = prom
        #: an upper bound of what ``with timer.time():`` observed
        self.timed_block_bound = timed_block_bound

    def value(self, promql: str) -> float:
        """The single value of ``promql``, once Prometheus has it."""
        return sinks.single_value(self.prom.query(promql), promql)


def _record_plain(metrics: mf.Metrics) -> float:
    requests = metrics.counter("t_requests_total", "Requests handled", ["method", "status"])
    requests.labels("ping", "ok").inc(3)
    requests.labels(method="call", status="error").inc(4)
    requests.labels("ping", "ok").inc(-1)  # dropped, and counted in metricsfacade_dropped_total
    metrics.gauge("t_queue_depth", "Requests waiting").set(42)
    sizes = metrics.histogram("t_size_bytes", "Message sizes", buckets=[0.1, 1])
    for observation in HISTOGRAM_OBSERVATIONS:
        sizes.observe(observation)
    timer = metrics.timer("t_handle_seconds", "Time handling a request")
    started = time.perf_counter()
    with timer.time():
        pass
    timed_block_bound = time.perf_counter() - started
    timer.observe(0.2)
    return timed_block_bound


def _record_labeled(metrics: mf.Metrics) -> None:
    metrics.counter("t_labeled_requests_total", "Requests", ["method"]).labels("ping").inc(2)
    metrics.histogram("t_labeled_latency_seconds", "Latency", buckets=[1]).observe(0.5)


@pytest.fixture(scope="module")
def scraped(start_prometheus_module: Callable[..., sinks.PrometheusServer]) -> Iterator[Scraped]:
    plain = start_facade()
    labeled = start_facade(common_labels={"service": "shadowcat"})
    try:
        timed_block_bound = _record_plain(plain)
        _record_labeled(labeled)
        prom = start_prometheus_module(
            {"plain": f"{plain.endpoint_url}/metrics", "labeled": f"{labeled.endpoint_url}/metrics"}
        )
        yield Scraped(prom, timed_block_bound)
    finally:
        plain.close()
        labeled.close()


@pytest.mark.sink
def test_targets_are_up(scraped: Scraped) -> None:
    assert scraped.value('up{job="plain"}') == 1, scraped.prom.diagnostics()
    assert scraped.value('up{job="labeled"}') == 1, scraped.prom.diagnostics()


@pytest.mark.sink
def test_counter_values(scraped: Scraped) -> None:
    # 3, not 2: the inc(-1) was dropped.
    assert scraped.value('t_requests_total{job="plain",method="ping",status="ok"}') == 3
    assert scraped.value('t_requests_total{job="plain",method="call",status="error"}') == 4
    assert len(scraped.prom.query('t_requests_total{job="plain"}')) == 2


@pytest.mark.sink
def test_gauge_value(scraped: Scraped) -> None:
    assert scraped.value('t_queue_depth{job="plain"}') == 42


@pytest.mark.sink
def test_histogram_values(scraped: Scraped) -> None:
    result = scraped.prom.query('t_size_bytes_bucket{job="plain"}')
    buckets = {sample["metric"]["le"]: sinks.value(sample) for sample in result}
    # Prometheus 2.x stores `le` as exposed ("1.0"); 3.x normalizes it to "1".
    one = "1.0" if "1.0" in buckets else "1"
    assert buckets == {"0.1": 1, one: 2, "+Inf": 3}, result
    assert scraped.value(f't_size_bytes_bucket{{job="plain",le="{one}"}}') == 2
    assert scraped.value('t_size_bytes_count{job="plain"}') == 3
    assert scraped.value('t_size_bytes_sum{job="plain"}') == sum(HISTOGRAM_OBSERVATIONS) == 5.55
    median = scraped.value("histogram_quantile(0.5, sum by (le) (t_size_bytes_bucket))")
    assert math.isfinite(median)
    # Rank 1.5 of 3 falls in (0.1, 1], holding the 2nd observation: 0.1 + 0.9 * 0.5.
    assert median == pytest.approx(0.55)


@pytest.mark.sink
def test_timer_values(scraped: Scraped) -> None:
    assert scraped.value('t_handle_seconds_count{job="plain"}') == 2
    assert scraped.value('t_handle_seconds_bucket{job="plain",le="+Inf"}') == 2
    total = scraped.value('t_handle_seconds_sum{job="plain"}')
    assert 0.2 <= total <= 0.2 + scraped.timed_block_bound + 1e-9
    # The default buckets plus +Inf.
    expected = len(mf.DEFAULT_BUCKETS) + 1
    assert len(scraped.prom.query('t_handle_seconds_bucket{job="plain"}')) == expected


@pytest.mark.sink
def test_dropped_recording_is_counted_in_self_metrics(scraped: Scraped) -> None:
    selector = (
        'metricsfacade_dropped_total{job="plain",metric="t_requests_total",reason="negative_value"}'
    )
    assert scraped.value(selector) == 1


@pytest.mark.sink
def test_common_labels_select_the_series(scraped: Scraped) -> None:
    result = scraped.prom.query('{service="shadowcat"}')
    names = {sample["metric"]["__name__"] for sample in result}
    assert names == {
        "t_labeled_requests_total",
        "t_labeled_latency_seconds_bucket",
        "t_labeled_latency_seconds_count",
        "t_labeled_latency_seconds_sum",
    }, result
    assert {sample["metric"]["job"] for sample in result} == {"labeled"}
    assert scraped.value('t_labeled_requests_total{service="shadowcat",method="ping"}') == 2
    # Every series the labeled facade exposes carries the label (up and scrape_* are
    # Prometheus' own series about the target).
    unlabeled = scraped.prom.query_once('{job="labeled",service="",__name__!~"up|scrape_.*"}')
    assert unlabeled == []


# -- promtool and the OpenMetrics parser ---------------------------------------------------


def _declare_representative_set(metrics: mf.Metrics) -> None:
    requests = metrics.counter("t_requests_total", "Requests handled", ["method", "status"])
    requests.labels("ping", "ok").inc(3)
    requests.labels('quote" back\\slash\nnewline', "\u00e9t\u00e9").inc()
    metrics.counter("t_retries", "Retries, declared without _total").inc(2)
    metrics.counter("t_errors_total", "Errors, never recorded", ["kind"])
    metrics.gauge("t_in_flight_requests", "Requests in flight").set(3)
    metrics.gauge("t_resident_memory_bytes", "Resident memory").set(1.5e9)
    metrics.gauge("t_temperature_celsius", "A negative gauge").set(-12.5)
    sizes = metrics.histogram(
        "t_response_size_bytes", "Response sizes", ["method"], buckets=[100, 1000, 1e6]
    )
    sizes.labels("ping").observe(512)
    sizes.labels("call").observe(2e6)
    metrics.histogram("t_idle_seconds", "Never observed")
    duration = metrics.timer("t_request_duration_seconds", "Request duration", ["method"])
    with duration.labels("ping").time():
        pass
    duration.labels("call").observe(0.3)


@pytest.mark.sink
@pytest.mark.parametrize(
    "config", [{}, {"common_labels": {"service": "shadowcat"}}], ids=["plain", "common_labels"]
)
def test_exposition_passes_promtool(
    serve_facade: ServeFacade, promtool_bin: str, config: dict[str, Any]
) -> None:
    metrics = serve_facade(**config)
    _declare_representative_set(metrics)
    content_type, body = fetch_exposition(metrics)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    text = body.decode()
    # The exposition really holds what was declared, escaped.
    assert "\nt_retries_total" in text, text
    assert 'method="quote\\" back\\\\slash\\nnewline"' in text, text
    check = sinks.promtool_check_metrics(promtool_bin, body)
    assert check.returncode == 0, sinks.describe_run(check, body)


@pytest.mark.sink
def test_promtool_check_catches_lint_problems(serve_facade: ServeFacade, promtool_bin: str) -> None:
    """The harness really lints: a gauge named like a counter is accepted by metricsfacade
    (it only enforces the name grammar) but promtool flags it with exit code 3."""
    metrics = serve_facade()
    metrics.gauge("t_queue_total", "A gauge named like a counter").set(1)
    _, body = fetch_exposition(metrics)
    check = sinks.promtool_check_metrics(promtool_bin, body)
    assert check.returncode == 3, sinks.describe_run(check, body)
    assert 'non-counter metrics should not have "_total" suffix' in check.stdout + check.stderr


def test_openmetrics_exposition_parses(serve_facade: ServeFacade) -> None:
    metrics = serve_facade(common_labels={"service": "shadowcat"})
    _declare_representative_set(metrics)
    content_type, body = fetch_exposition(metrics, OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type
    text = body.decode()
    assert text.endswith("# EOF\n"), text[-200:]
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["t_requests"].type == "counter"
    assert families["t_retries"].type == "counter"
    assert families["t_in_flight_requests"].type == "gauge"
    assert families["t_response_size_bytes"].type == "histogram"
    assert families["t_request_duration_seconds"].type == "histogram"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    common = ("service", "shadowcat")
    ping_ok = (("method", "ping"), common, ("status", "ok"))
    assert samples[("t_requests_total", ping_ok)] == 3
    odd = (("method", 'quote" back\\slash\nnewline'), common, ("status", "\u00e9t\u00e9"))
    assert samples[("t_requests_total", odd)] == 1
    assert samples[("t_retries_total", (common,))] == 2
    assert samples[("t_temperature_celsius", (common,))] == -12.5
    call = (("le", "+Inf"), ("method", "call"), common)
    assert samples[("t_response_size_bytes_bucket", call)] == 1
    assert (
        samples[("t_response_size_bytes_bucket", (("le", "1e+06"), ("method", "call"), common))]
        == 0
    )


@pytest.mark.sink
def test_self_metrics_after_drops_pass_promtool(
    serve_facade: ServeFacade, promtool_bin: str
) -> None:
    metrics = serve_facade(cardinality_limit=2)
    requests = metrics.counter("t_requests_total", "Requests handled", ["method", "status"])
    requests.labels("ping", "ok").inc(3)
    requests.labels("call", "ok").inc()
    requests.labels("list", "ok").inc()  # past the cardinality limit: folded into __overflow__
    requests.labels("ping", "ok").inc(-1)  # dropped: negative
    requests.labels("ping", "ok", "extra").inc()  # dropped: unknown label
    _, body = fetch_exposition(metrics)
    text = body.decode()
    expected = [
        't_requests_total{method="ping",status="ok"} 3.0',
        'metricsfacade_dropped_total{metric="t_requests_total",reason="negative_value"} 1.0',
        'metricsfacade_dropped_total{metric="t_requests_total",reason="unknown_label"} 1.0',
        'metricsfacade_cardinality_overflow_total{metric="t_requests_total"} 1.0',
        't_requests_total{method="__overflow__",status="__overflow__"} 1.0',
    ]
    missing = [line for line in expected if line not in text.splitlines()]
    assert not missing, f"missing {missing} in:\n{text}"
    check = sinks.promtool_check_metrics(promtool_bin, body)
    assert check.returncode == 0, sinks.describe_run(check, body)


def test_self_metric_series_do_not_use_up_the_cardinality_budget(serve_facade: ServeFacade) -> None:
    """Self-metrics are exempt from the limit, so their series must not count against it:
    recording a drop must not push the user's next series into the overflow series."""
    metrics = serve_facade(cardinality_limit=2)
    requests = metrics.counter("t_requests_total", "Requests handled", ["method", "status"])
    requests.labels("ping", "ok").inc(-1)  # user series 1; the drop adds a self-metric series
    requests.labels("call", "ok").inc()  # user series 2: within the limit of 2
    _, body = fetch_exposition(metrics)
    lines = body.decode().splitlines()
    assert 't_requests_total{method="call",status="ok"} 1.0' in lines, body.decode()
    assert not any("__overflow__" in line for line in lines), body.decode()


@pytest.mark.sink
@pytest.mark.parametrize(
    ("first", "second"),
    [
        # A counter declared without _total is exposed as t_jobs_total...
        (("counter", "t_jobs"), ("gauge", "t_jobs_total")),
        # ...and a histogram as t_latency_seconds_{bucket,count,sum}.
        (("histogram", "t_latency_seconds"), ("gauge", "t_latency_seconds_count")),
    ],
    ids=["counter-vs-gauge_total", "histogram-vs-gauge_count"],
)
def test_declarations_with_colliding_exposed_names_are_rejected(
    serve_facade: ServeFacade, promtool_bin: str, first: tuple[str, str], second: tuple[str, str]
) -> None:
    """Two metrics whose exposed sample names collide make the whole exposition invalid
    (promtool: parse error; prometheus_client's OpenMetrics parser: "Clashing name"; the
    Prometheus server silently keeps only one of the duplicate series). The second
    declaration must raise DeclarationError, and the exposition must stay valid."""
    metrics = serve_facade()
    getattr(metrics, first[0])(first[1], "first metric")
    try:
        getattr(metrics, second[0])(second[1], "second metric")
    except mf.DeclarationError:
        rejected = True
    else:
        rejected = False
    _, body = fetch_exposition(metrics)
    check = sinks.promtool_check_metrics(promtool_bin, body)
    assert rejected, (
        f"declaring {second[0]} {second[1]!r} after {first[0]} {first[1]!r} was accepted; "
        f"the exposition is now invalid:\n{sinks.describe_run(check, body)}"
    )
    assert check.returncode == 0, sinks.describe_run(check, body)


# -- the skip-or-fail rule of require_tool -------------------------------------------------

MISSING_TOOL = "metricsfacade-no-such-tool-4f1c"


def test_require_tool_skips_a_missing_tool_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sinks.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING_TOOL):
        sinks.require_tool(MISSING_TOOL)


def test_require_tool_fails_a_missing_tool_when_sinks_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(sinks.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"REQUIRE_REAL_SINKS=1 but '{MISSING_TOOL}'"):
        sinks.require_tool(MISSING_TOOL)


def test_require_tool_returns_the_path_of_a_present_tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tool = tmp_path / "fake-sink-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(sinks.REQUIRE_ENV, "1")
    assert sinks.require_tool("fake-sink-tool") == str(tool)
