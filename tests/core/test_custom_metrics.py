"""Custom metrics: CustomMetrics on any facade, the module-level brief signatures, and metrics
declared by the ``custom_metrics`` config list."""

from __future__ import annotations

from typing import Any

import pytest
from support import bucket_bounds, families, scrape

import metricsfacade as mf
from metricsfacade.testing import MetricsMock


@pytest.fixture
def custom(facade: mf.Metrics) -> mf.CustomMetrics:
    return mf.CustomMetrics(facade)


# -- register_custom_metric ---------------------------------------------------------------------


def test_register_returns_a_histogram_with_those_buckets(
    custom: mf.CustomMetrics, mock: MetricsMock
) -> None:
    handle = custom.register_custom_metric("db_query_seconds", "DB query time", [0.01, 0.1, 1])
    assert isinstance(handle, mf.Histogram)
    assert handle.spec.buckets == (0.01, 0.1, 1.0)
    assert handle.spec.help == "DB query time"
    handle.observe(0.05)
    custom.record("db_query_seconds", 0.5)
    [record] = mock.records("db_query_seconds")
    assert record.histogram is not None
    assert record.histogram.bounds == (0.01, 0.1, 1.0)
    assert record.histogram.counts == (0, 1, 1, 0)
    mock.assert_observed("db_query_seconds", {}, values=[0.05, 0.5])


def test_registering_again_returns_the_same_handle(custom: mf.CustomMetrics) -> None:
    first = custom.register_custom_metric("db_query_seconds", "DB query time", [0.01, 0.1, 1])
    again = custom.register_custom_metric("db_query_seconds", "DB query time", [0.01, 0.1, 1.0])
    other_registry = mf.CustomMetrics(custom.facade).register_custom_metric(
        "db_query_seconds", "DB query time", (0.01, 0.1, 1)
    )
    assert again is first
    assert other_registry is first


def test_registering_with_other_buckets_names_both_declarations(
    custom: mf.CustomMetrics,
) -> None:
    first = custom.register_custom_metric("db_query_seconds", "DB query time", [0.01, 0.1, 1])
    with pytest.raises(mf.DeclarationError) as raised:
        custom.register_custom_metric("db_query_seconds", "DB query time", [1, 2])
    message = str(raised.value)
    assert "db_query_seconds" in message
    assert "[1.0, 2.0]" in message
    assert "[0.01, 0.1, 1.0]" in message
    assert custom.register_custom_metric("db_query_seconds", "x", [0.01, 0.1, 1]) is first


def test_register_rejects_bad_declarations(custom: mf.CustomMetrics) -> None:
    with pytest.raises(mf.DeclarationError, match="bad name"):
        custom.register_custom_metric("bad name", "x", [1])
    with pytest.raises(mf.DeclarationError, match="increasing"):
        custom.register_custom_metric("ok_name", "x", [2, 1])
    with pytest.raises(mf.DeclarationError, match="not finite"):
        custom.register_custom_metric("ok_name", "x", [1, float("inf")])


# -- record / increment / set_gauge --------------------------------------------------------------


def test_record_declares_on_first_use_with_default_buckets(
    facade: mf.Metrics, custom: mf.CustomMetrics, mock: MetricsMock
) -> None:
    custom.record("cache_payload_bytes", 512)
    custom.record("cache_payload_bytes", 0.002)
    mock.assert_observed("cache_payload_bytes", {}, values=[512, 0.002])
    handle = facade.histogram("cache_payload_bytes", "ignored")
    assert handle.spec.help == "Custom metric: cache_payload_bytes"
    assert handle.spec.buckets is None  # the configured default
    [record] = mock.records("cache_payload_bytes")
    assert record.histogram is not None
    assert record.histogram.bounds == mf.DEFAULT_BUCKETS
    assert mock.dropped() == 0


def test_increment_and_set_gauge_declare_on_first_use(
    facade: mf.Metrics, custom: mf.CustomMetrics, mock: MetricsMock
) -> None:
    custom.increment("jobs_done_total")
    custom.increment("jobs_done_total", 4)
    custom.set_gauge("queue_depth", 7)
    custom.set_gauge("queue_depth", 3)
    mock.assert_counter("jobs_done_total", {}, 5)
    mock.assert_gauge("queue_depth", {}, 3)
    assert facade.counter("jobs_done_total", "x").spec.help == "Custom metric: jobs_done_total"
    assert facade.gauge("queue_depth", "x").spec.help == "Custom metric: queue_depth"
    assert mock.dropped() == 0


def test_recording_with_labels(
    facade: mf.Metrics, custom: mf.CustomMetrics, mock: MetricsMock
) -> None:
    custom.record("route_seconds", 0.3, {"route": "/a"})
    custom.record("route_seconds", 0.4, {"route": "/b"})
    custom.record("route_seconds", 0.5, {"route": "/a"})
    custom.increment("route_hits_total", 2, {"route": "/a", "method": "GET"})
    custom.set_gauge("route_inflight", 4, {"route": "/a"})
    mock.assert_observed("route_seconds", {"route": "/a"}, values=[0.3, 0.5])
    mock.assert_observed("route_seconds", {"route": "/b"}, values=[0.4])
    mock.assert_counter("route_hits_total", {"route": "/a", "method": "GET"}, 2)
    mock.assert_gauge("route_inflight", {"route": "/a"}, 4)
    assert facade.histogram("route_seconds", "x", ["route"]).spec.label_names == ("route",)
    assert mock.dropped() == 0


CONFLICTS = [
    pytest.param(lambda c: c.record("jobs_total", 1), id="record-into-a-counter"),
    pytest.param(lambda c: c.record("jobs", 1), id="record-into-a-counter-by-key"),
    pytest.param(lambda c: c.set_gauge("jobs_total", 1), id="gauge-onto-a-counter"),
    pytest.param(lambda c: c.increment("latency_seconds"), id="increment-a-timer"),
    pytest.param(lambda c: c.increment("depth"), id="increment-a-gauge"),
    pytest.param(lambda c: c.record("bad name", 1), id="invalid-name"),
    pytest.param(lambda c: c.increment("bad-name"), id="invalid-name-counter"),
    pytest.param(lambda c: c.set_gauge("9lives", 1), id="invalid-name-gauge"),
    pytest.param(lambda c: c.record("fine_name", 1, {"bad label": "x"}), id="invalid-label"),
    pytest.param(lambda c: c.record("fine_name2", 1, {"le": "x"}), id="reserved-le"),
    pytest.param(lambda c: c.record("metricsfacade_mine", 1), id="reserved-prefix"),
]


def declare_existing(metrics: mf.Metrics, custom: mf.CustomMetrics) -> None:
    metrics.counter("jobs_total", "Jobs")
    metrics.timer("latency_seconds", "Latency")
    custom.set_gauge("depth", 1)


@pytest.mark.parametrize("conflict", CONFLICTS)
def test_conflicts_at_record_time_are_dropped(
    facade: mf.Metrics, custom: mf.CustomMetrics, mock: MetricsMock, conflict: Any
) -> None:
    declare_existing(facade, custom)
    conflict(custom)
    conflict(custom)  # the cached path too
    assert mock.dropped("custom", "invalid_declaration") == 2
    assert mock.dropped() == 2
    mock.assert_counter("jobs_total", {}, 0)
    mock.assert_gauge("depth", {}, 1)


@pytest.mark.parametrize("conflict", CONFLICTS)
def test_conflicts_at_record_time_raise_in_strict_mode(make_facade, conflict: Any) -> None:
    metrics = make_facade(strict=True)
    try:
        custom = mf.CustomMetrics(metrics)
        declare_existing(metrics, custom)
        with pytest.raises(mf.RecordError):
            conflict(custom)
    finally:
        metrics.close()


def test_recording_into_a_metric_declared_with_buckets_elsewhere(
    facade: mf.Metrics, mock: MetricsMock
) -> None:
    """A histogram declared with its own buckets (by another registry, or directly) is an
    existing custom metric: recording it by name observes into it."""
    mf.CustomMetrics(facade).register_custom_metric("db_query_seconds", "DB", [0.01, 0.1, 1])
    facade.histogram("payload_bytes", "Payloads", buckets=[10, 100])
    custom = mf.CustomMetrics(facade)
    custom.record("db_query_seconds", 0.05)
    custom.record("payload_bytes", 50)
    assert mock.dropped() == 0
    mock.assert_observed("db_query_seconds", {}, values=[0.05])
    mock.assert_observed("payload_bytes", {}, values=[50])


# -- the cardinality limit -------------------------------------------------------------------


def test_custom_metrics_count_against_the_cardinality_limit(make_facade) -> None:
    metrics = make_facade(cardinality_limit=5)
    try:
        custom = mf.CustomMetrics(metrics)
        with MetricsMock(metrics) as mock:
            for index in range(5):
                custom.record(f"custom_{index}", index)
            assert not metrics.has_series_budget()
            custom.record("custom_new", 1)
            custom.increment("custom_new_total")
            custom.set_gauge("custom_new_gauge", 1)
            assert mock.dropped("custom", "cardinality_limit") == 3
            assert mock.records("custom_new") == []
            assert mock.records("custom_new_total") == []
            # no handle was made: these names are still free for any kind
            metrics.gauge("custom_new", "now a gauge")
            metrics.histogram("custom_new_total", "now a histogram")
            metrics.counter("custom_new_gauge", "now a counter")
            # existing custom metrics keep recording exactly
            custom.record("custom_0", 10)
            mock.assert_observed("custom_0", {}, values=[0, 10])
            assert mock.dropped("custom", "cardinality_limit") == 3
    finally:
        metrics.close()


def test_a_labeled_custom_metric_past_the_limit_overflows(make_facade) -> None:
    metrics = make_facade(cardinality_limit=2)
    try:
        custom = mf.CustomMetrics(metrics)
        with MetricsMock(metrics) as mock:
            custom.increment("hits_total", labels={"route": "/a"})
            custom.increment("hits_total", labels={"route": "/b"})
            custom.increment("hits_total", labels={"route": "/c"})  # a new series past the cap
            custom.increment("hits_total", labels={"route": "/a"})
            mock.assert_counter("hits_total", {"route": "/a"}, 2)
            mock.assert_counter("hits_total", {"route": mf.OVERFLOW_LABEL_VALUE}, 1)
            mock.assert_counter(
                "metricsfacade_cardinality_overflow_total", {"metric": "hits_total"}, 1
            )
    finally:
        metrics.close()


def test_an_existing_config_metric_keeps_recording_past_the_limit(make_facade) -> None:
    metrics = make_facade(
        cardinality_limit=2,
        custom_metrics=[{"name": "cfg_payload_bytes", "kind": "histogram"}],
    )
    try:
        metrics.gauge("other_gauge", "fills the budget")
        custom = mf.CustomMetrics(metrics)
        with MetricsMock(metrics) as mock:
            assert not metrics.has_series_budget()
            custom.record("cfg_payload_bytes", 3)
            assert mock.dropped() == 0
            mock.assert_observed("cfg_payload_bytes", {}, values=[3])
    finally:
        metrics.close()


# -- every backend -------------------------------------------------------------------------------


def test_custom_metrics_reach_every_backend(make_facade) -> None:
    metrics = make_facade(backends=["memory", "prometheus"])
    try:
        custom = mf.CustomMetrics(metrics)
        custom.register_custom_metric("db_query_seconds", "DB query time", [0.01, 0.1, 1])
        custom.record("db_query_seconds", 0.05)
        custom.record("cache_payload_bytes", 512)
        custom.increment("jobs_run_total", 3, {"queue": "fast"})
        custom.set_gauge("queue_depth", 7)
        parsed = families(scrape(metrics))

        db = parsed["db_query_seconds"]
        assert db.type == "histogram"
        assert db.documentation == "DB query time"
        assert bucket_bounds(db) == (0.01, 0.1, 1.0)
        assert {s.name: s.value for s in db.samples if s.name.endswith("_count")} == {
            "db_query_seconds_count": 1
        }

        payload = parsed["cache_payload_bytes"]
        assert payload.documentation == "Custom metric: cache_payload_bytes"
        assert bucket_bounds(payload) == mf.DEFAULT_BUCKETS
        [total] = [s.value for s in payload.samples if s.name == "cache_payload_bytes_sum"]
        assert total == 512

        jobs = parsed["jobs_run_total"]
        assert jobs.type == "counter"
        assert [(s.name, s.labels, s.value) for s in jobs.samples] == [
            ("jobs_run_total", {"queue": "fast"}, 3)
        ]
        depth = parsed["queue_depth"]
        assert depth.type == "gauge"
        assert [s.value for s in depth.samples] == [7]

        memory = metrics.backend("memory")
        assert memory.value("queue_depth") == 7  # type: ignore[attr-defined]
        assert memory.value("jobs_run_total", {"queue": "fast"}) == 3  # type: ignore[attr-defined]
    finally:
        metrics.close()


# -- custom_metrics in the config ------------------------------------------------------------

CONFIG_METRICS = [
    {"name": "jobs_total", "kind": "counter", "help": "Jobs", "labels": ["queue"]},
    {"name": "job_seconds", "kind": "timer", "buckets": [1, 5]},
]


def test_config_metrics_are_declared_at_configure(make_facade) -> None:
    metrics = make_facade(backends=["memory", "prometheus"], custom_metrics=CONFIG_METRICS)
    try:
        text = scrape(metrics)
        assert "# HELP jobs_total Jobs\n# TYPE jobs_total counter\n" in text
        assert "# HELP job_seconds Custom metric: job_seconds\n" in text
        assert "# TYPE job_seconds histogram\n" in text
        parsed = families(scrape(metrics))
        assert parsed["jobs_total"].type == "counter"
        assert parsed["jobs_total"].samples == []  # labeled: no series until recorded
        assert bucket_bounds(parsed["job_seconds"]) == (1.0, 5.0)

        jobs = metrics.counter("jobs_total", "Jobs", ["queue"])
        assert metrics.counter("jobs_total", "Jobs", ["queue"]) is jobs
        assert jobs.spec.help == "Jobs"
        timer = metrics.timer("job_seconds", "Job time", buckets=[1, 5])
        assert isinstance(timer, mf.Timer)
        assert timer.spec.help == "Custom metric: job_seconds"
        with pytest.raises(mf.DeclarationError):
            metrics.counter("jobs_total", "Jobs", ["other"])
        with pytest.raises(mf.DeclarationError):
            metrics.timer("job_seconds", "Job time", buckets=[1, 10])

        jobs.labels(queue="fast").inc(2)
        timer.observe(3)
        parsed = families(scrape(metrics))
        assert [(s.labels, s.value) for s in parsed["jobs_total"].samples] == [
            ({"queue": "fast"}, 2)
        ]
        [count] = [s.value for s in parsed["job_seconds"].samples if s.name.endswith("_count")]
        assert count == 1
    finally:
        metrics.close()


def test_config_metrics_survive_reconfiguration(make_facade) -> None:
    metrics = make_facade(custom_metrics=CONFIG_METRICS)
    try:
        jobs = metrics.counter("jobs_total", "Jobs", ["queue"])
        metrics.configure(
            {"port": None, "backends": ["memory"], "custom_metrics": CONFIG_METRICS}, environ={}
        )
        assert metrics.counter("jobs_total", "Jobs", ["queue"]) is jobs
        jobs.labels("slow").inc()
        memory = metrics.backend("memory")
        assert memory.value("jobs_total", {"queue": "slow"}) == 1  # type: ignore[attr-defined]
    finally:
        metrics.close()


def test_config_metrics_from_a_toml_file(tmp_path: Any) -> None:
    path = tmp_path / "shadowcat.toml"
    path.write_text(
        "[metrics]\n"
        'port = "off"\n'
        'backends = ["memory"]\n'
        "[[metrics.custom_metrics]]\n"
        'name = "jobs_total"\n'
        'kind = "counter"\n'
        'help = "Jobs run"\n'
        'labels = ["queue"]\n'
        "[[metrics.custom_metrics]]\n"
        'name = "job_seconds"\n'
        'kind = "timer"\n'
        "buckets = [1, 5, 30]\n"
    )
    metrics = mf.Metrics(path, environ={})
    try:
        assert metrics.counter("jobs_total", "Jobs run", ["queue"]).spec.help == "Jobs run"
        assert metrics.timer("job_seconds", "x", buckets=[1, 5, 30]).spec.buckets == (1, 5, 30)
    finally:
        metrics.close()


def test_recording_a_config_metric_by_name(make_facade) -> None:
    """What the config declares, code records by name (README: "exist from configure() on")."""
    metrics = make_facade(
        custom_metrics=[
            {"name": "jobs_total", "kind": "counter", "help": "Jobs", "labels": ["queue"]},
            {"name": "job_payload_bytes", "kind": "histogram", "buckets": [100, 1000]},
        ]
    )
    try:
        custom = mf.CustomMetrics(metrics)
        with MetricsMock(metrics) as mock:
            custom.increment("jobs_total", labels={"queue": "fast"})
            custom.record("job_payload_bytes", 512)
            mock.assert_counter("jobs_total", {"queue": "fast"}, 1)
            mock.assert_observed("job_payload_bytes", {}, values=[512])
            assert mock.dropped() == 0
    finally:
        metrics.close()


BAD_ENTRIES = [
    pytest.param([{"name": "a_total", "kind": "counter", "colour": "red"}], 0, "colour", id="key"),
    pytest.param(
        [{"name": "ok_total", "kind": "counter"}, {"name": "b", "kind": "meter"}],
        1,
        "meter",
        id="kind",
    ),
    pytest.param([{"name": "bad name", "kind": "gauge"}], 0, "bad name", id="name"),
    pytest.param([{"kind": "gauge"}], 0, "None", id="no-name"),
    pytest.param(
        [{"name": "ok", "kind": "gauge"}, {"name": "h", "buckets": [5, 1]}],
        1,
        "increasing",
        id="buckets-order",
    ),
    pytest.param([{"name": "h", "buckets": []}], 0, "empty", id="buckets-empty"),
    pytest.param([{"name": "h", "buckets": "1,5"}], 0, "buckets", id="buckets-string"),
    pytest.param([{"name": "h", "buckets": [1, "5"]}], 0, "'5'", id="buckets-item"),
    pytest.param([{"name": "c", "kind": "counter", "buckets": [1]}], 0, "buckets", id="c-buckets"),
    pytest.param([{"name": "g", "kind": "gauge", "labels": "queue"}], 0, "queue", id="labels-str"),
    pytest.param([{"name": "g", "kind": "gauge", "labels": ["a b"]}], 0, "a b", id="label-name"),
    pytest.param([{"name": "g", "kind": "gauge", "help": 5}], 0, "help", id="help"),
    pytest.param(["jobs_total"], 0, "table", id="not-a-table"),
]


@pytest.mark.parametrize(("entries", "index", "detail"), BAD_ENTRIES)
def test_bad_config_entries_raise_config_error(
    make_facade, entries: Any, index: int, detail: str
) -> None:
    with pytest.raises(mf.ConfigError) as raised:
        make_facade(custom_metrics=entries)
    message = str(raised.value)
    assert "custom_metrics" in message
    assert f"[{index}]" in message
    assert detail in message


def test_custom_metrics_must_be_a_list(make_facade) -> None:
    with pytest.raises(mf.ConfigError, match="custom_metrics"):
        make_facade(custom_metrics={"name": "jobs_total", "kind": "counter"})
    with pytest.raises(mf.ConfigError, match="METRICSFACADE_CUSTOM_METRICS"):
        mf.load_config({}, environ={"METRICSFACADE_CUSTOM_METRICS": "jobs_total"})


def test_a_bad_entry_leaves_the_running_config(facade: mf.Metrics) -> None:
    config = facade.config
    memory = facade.backend("memory")
    with pytest.raises(mf.ConfigError, match=r"custom_metrics: \[0\]"):
        facade.configure(
            {"port": None, "backends": ["memory"], "custom_metrics": [{"name": "x y"}]},
            environ={},
        )
    assert facade.config is config
    assert facade.backend("memory") is memory


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"name": "jobs_total", "kind": "gauge"}, id="other-kind"),
        pytest.param({"name": "jobs_total", "kind": "counter", "labels": ["q"]}, id="other-labels"),
        pytest.param({"name": "jobs", "kind": "counter"}, id="same-key-no-labels"),
        pytest.param({"name": "jobs_created", "kind": "gauge"}, id="exposition-clash"),
    ],
)
def test_a_conflicting_config_metric_raises_and_keeps_the_old_config(
    facade: mf.Metrics, entry: dict[str, Any]
) -> None:
    jobs = facade.counter("jobs_total", "Jobs", ["queue"])
    config = facade.config
    memory = facade.backend("memory")
    with pytest.raises(mf.DeclarationError, match="jobs"):
        facade.configure(
            {"port": None, "backends": ["memory", "prometheus"], "custom_metrics": [entry]},
            environ={},
        )
    assert facade.config is config
    assert facade.backend("memory") is memory
    with pytest.raises(KeyError):
        facade.backend("prometheus")
    jobs.labels("fast").inc()
    assert memory.value("jobs_total", {"queue": "fast"}) == 1  # type: ignore[attr-defined]


# -- the module-level brief signatures on the global facade ------------------------------------


def test_module_level_register_and_record(metrics_mock: MetricsMock) -> None:
    handle = mf.register_custom_metric("test_custom_module_seconds", "Module latency", [0.1, 1])
    assert isinstance(handle, mf.Histogram)
    assert handle.spec.buckets == (0.1, 1.0)
    assert mf.register_custom_metric("test_custom_module_seconds", "Module latency", [0.1, 1]) is (
        handle
    )
    assert mf.get_metrics().histogram("test_custom_module_seconds", "x", None, [0.1, 1]) is handle
    mf.record("test_custom_module_seconds", 0.5)
    mf.record("test_custom_module_seconds", 2)
    mf.record("test_custom_module_new_bytes", 3)
    metrics_mock.assert_observed("test_custom_module_seconds", {}, values=[0.5, 2])
    metrics_mock.assert_observed("test_custom_module_new_bytes", {}, values=[3])
    [record] = metrics_mock.records("test_custom_module_seconds")
    assert record.histogram is not None
    assert record.histogram.counts == (0, 1, 1)
    mf.record("bad name", 1)
    assert metrics_mock.dropped("custom", "invalid_declaration") == 1
    with pytest.raises(mf.DeclarationError):
        mf.register_custom_metric("test_custom_module_seconds", "Module latency", [0.2])
