"""metricsfacade against the real Etsy StatsD daemon 0.9.0 (no mocks): real UDP and TCP.

Every test gets its own daemon (``statsd_daemon``, ready in ~0.2 s) and reads back what it
holds through the management console (``counters``, ``gauges``, ``timers``), so values are
compared exactly and the daemon's ``statsd.bad_lines_seen`` must stay 0. What the daemon does
with a line, from its source (stats.js, 0.9.0):

- DogStatsD tags ``|#k:v,k2:v2`` become the key ``name;k=v;k2=v2`` (in the order sent), and
  the whole key is then sanitized: whitespace -> ``_``, ``/`` -> ``-``, and every character
  outside ``[a-zA-Z0-9_.;=-]`` removed;
- ``ms`` lines are timers (a list of the values, negative ones are bad lines); every other
  type but ``g`` and ``s`` (so ``h`` and ``d``) is counted as a counter;
- a line is split at every ``:`` and each bit needs its own ``|type``: a DogStatsD
  multi-value line ``name:v1:v2|h`` is a bad line for ``v1``, so the Datadog backend's
  histograms are read by a strict DogStatsD parser on a plain UDP socket instead;
- a gauge value with a sign is a delta, unless the gauge is unset or 0.

Missing node or daemon skip these tests, or fail them under ``REQUIRE_REAL_SINKS=1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from support import require_module, sinks, strict_statsd

import metricsfacade as mf

require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MakeFacade = Callable[..., mf.Metrics]
StartStatsd = Callable[[], sinks.StatsdDaemon]
UDP_MAX_PACKET = 1432  # the library's default datagram size (statsd.UDP_MAX_PACKET)


def statsd_to(daemon: sinks.StatsdDaemon, **settings: Any) -> dict[str, Any]:
    statsd = {"host": daemon.host, "port": daemon.port, **settings}
    return {"backends": ["statsd"], "statsd": statsd}


def running_sum(amounts: list[float]) -> float:
    """The sum in the order the daemon adds (Python 3.12's sum() compensates rounding)."""
    total = 0.0
    for amount in amounts:
        total += amount
    return total


def settled_counters(daemon: sinks.StatsdDaemon, expected: Mapping[str, float]) -> dict[str, Any]:
    """The daemon's counters (without its own statsd.*) once ``expected`` is reached, or
    after the polling timeout."""
    counters = daemon.wait_for("counters", expected)
    return {k: v for k, v in counters.items() if k not in sinks.STATSD_OWN_COUNTERS}


def settled_gauges(daemon: sinks.StatsdDaemon, expected: Mapping[str, float]) -> dict[str, Any]:
    return dict(daemon.wait_for("gauges", expected))


def settled_timers(
    daemon: sinks.StatsdDaemon, expected: Mapping[str, list[float]]
) -> dict[str, list[float]]:
    """Timer lists, sorted (the values are compared as multisets)."""
    timers = daemon.wait_for("timers", expected)
    return {key: sorted(values) for key, values in timers.items()}


def sorted_lists(timers: Mapping[str, list[float]]) -> dict[str, list[float]]:
    return {key: sorted(values) for key, values in timers.items()}


def assert_no_bad_lines(daemon: sinks.StatsdDaemon) -> None:
    assert daemon.bad_lines_seen == 0, daemon.diagnostics()


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@attrs.frozen
class SinkView:
    """What a DogStatsD agent makes of the lines a :class:`sinks.UdpLineSink` received, per
    ``(name, tags)``: counter sums (in arrival order), last gauge values (DogStatsD gauges are
    absolute), histogram values (a multiset) and counts (each value counts ``1/rate``)."""

    counters: dict[SeriesKey, float]
    gauges: dict[SeriesKey, float]
    values: dict[SeriesKey, list[float]]
    counts: dict[SeriesKey, float]
    types: dict[SeriesKey, set[str]]

    @classmethod
    def of(cls, lines: list[strict_statsd.Line]) -> SinkView:
        view = cls({}, {}, {}, {}, {})
        for line in lines:
            key = (line.name, line.tags)
            view.types.setdefault(key, set()).add(line.type)
            if line.type == "c":
                view.counters[key] = view.counters.get(key, 0.0) + line.value * (
                    1 / (line.rate or 1)
                )
            elif line.type == "g":
                view.gauges[key] = line.value
            else:
                view.values.setdefault(key, []).extend(line.all_values)
                view.counts[key] = view.counts.get(key, 0.0) + len(line.all_values) / (
                    line.rate or 1
                )
        return view


# -- StatsD backend over UDP ----------------------------------------------------------------

REQUEST_AMOUNTS = [1, 1, 2, 0.5, 0.1, 0.2]


def record_catalog(metrics: mf.Metrics) -> None:
    """Counters with labels (floats too), gauges (set, inc, dec, negative values), a
    histogram and a timer; see ``catalog_expectations`` for what the daemon must hold."""
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method", "status"])
    ping = requests.labels("ping", "ok")
    for amount in REQUEST_AMOUNTS:
        ping.inc(amount)
    requests.labels(method="tools/call", status="error").inc(3)
    requests.labels("ping", "ok").inc(-1)  # dropped by the facade: never sent

    sessions = metrics.gauge("shadowcat_active_sessions", "Sessions", ["transport"])
    stdio = sessions.labels("stdio")
    stdio.set(10)
    stdio.inc(5)
    stdio.dec(3)
    stdio.inc(0.5)
    http = sessions.labels("http")
    http.set(4)
    http.set(-7.25)  # from a positive value to a negative one: must not be a delta
    sse = sessions.labels("sse")
    sse.set(-2)
    sse.dec(1.5)  # a delta from a negative value
    ws = sessions.labels("ws")
    ws.set(-5)
    ws.set(6)  # from a negative value back to a positive one
    # Negative from the very first line.
    metrics.gauge("shadowcat_temperature_celsius", "Temperature").set(-12.5)

    sizes = metrics.histogram(
        "shadowcat_message_size_bytes", "Sizes", ["direction"], buckets=[100, 1000]
    )
    for size in (512, 2048, 0):
        sizes.labels("in").observe(size)
    duration = metrics.timer("shadowcat_request_duration_seconds", "Latency", ["method"])
    for seconds in (0.25, 1.5, 0.0125):
        duration.labels("ping").observe(seconds)


def catalog_expectations(prefix: str = "") -> tuple[dict[str, float], ...]:
    """(counters, gauges, timers) the daemon holds after ``record_catalog``."""
    p = f"{prefix}." if prefix else ""
    counters = {
        f"{p}shadowcat.requests;method=ping;status=ok": running_sum(REQUEST_AMOUNTS),
        # The daemon turns "/" into "-" in keys.
        f"{p}shadowcat.requests;method=tools-call;status=error": 3,
        # The facade's own count of the dropped inc(-1) goes to every backend too.
        f"{p}metricsfacade.dropped;metric=shadowcat_requests_total;reason=negative_value": 1,
    }
    gauges = {
        f"{p}shadowcat.active_sessions;transport=stdio": 12.5,
        f"{p}shadowcat.active_sessions;transport=http": -7.25,
        f"{p}shadowcat.active_sessions;transport=sse": -3.5,
        f"{p}shadowcat.active_sessions;transport=ws": 6,
        f"{p}shadowcat.temperature_celsius": -12.5,
    }
    timers = {
        f"{p}shadowcat.message_size_bytes;direction=in": [0, 512, 2048],
        # Timers drop "_seconds" and are sent in milliseconds.
        f"{p}shadowcat.request_duration;method=ping": [12.5, 250, 1500],
    }
    return counters, gauges, timers


@pytest.mark.sink
def test_statsd_udp_values_arrive_exactly(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    metrics = make_facade(**statsd_to(statsd_daemon))
    record_catalog(metrics)
    metrics.flush()

    counters, gauges, timers = catalog_expectations()
    assert settled_counters(statsd_daemon, counters) == counters, statsd_daemon.diagnostics()
    assert settled_gauges(statsd_daemon, gauges) == gauges, statsd_daemon.diagnostics()
    assert settled_timers(statsd_daemon, timers) == timers, statsd_daemon.diagnostics()
    assert_no_bad_lines(statsd_daemon)


@pytest.mark.sink
def test_statsd_lines_are_batched_into_datagrams(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    """Nothing is sent before a flush (the flush interval is long), then one datagram holds
    every line. A flush sends one line per series that changed (not one per recording, as
    before the series store): the 18 recordings of the catalog's counters and gauges become
    one line per series, and a flush with no change sends nothing."""
    metrics = make_facade(**statsd_to(statsd_daemon, flush_interval_secs=60))
    record_catalog(metrics)
    # 2 counter series and the facade's count of the dropped inc(-1); 5 gauge series, of
    # which 3 end negative (2 lines each: 0, then the negative value); 3 + 3 ms values.
    lines = 3 + (5 + 3) + 6
    assert statsd_daemon.counters()[sinks.STATSD_PACKETS] == 0
    metrics.flush()
    counters = statsd_daemon.wait_for_lines(lines)
    assert counters[sinks.STATSD_METRICS] == lines, statsd_daemon.diagnostics()
    assert counters[sinks.STATSD_PACKETS] == 1, statsd_daemon.diagnostics()

    metrics.flush()  # nothing changed: nothing sent
    ping = metrics.counter("shadowcat_requests_total", "Requests", ["method", "status"])
    for _ in range(10):
        ping.labels("ping", "ok").inc()
    metrics.flush()  # one series changed: one line, its increase
    counters = statsd_daemon.wait_for_lines(lines + 1)
    assert counters[sinks.STATSD_METRICS] == lines + 1, statsd_daemon.diagnostics()
    assert counters[sinks.STATSD_PACKETS] == 2, statsd_daemon.diagnostics()
    key = "shadowcat.requests;method=ping;status=ok"
    assert counters[key] == running_sum([*REQUEST_AMOUNTS, 10]), statsd_daemon.diagnostics()
    assert_no_bad_lines(statsd_daemon)


@pytest.mark.sink
def test_statsd_gauge_set_to_negative_zero_ends_at_zero(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    """``set(-0.0)`` (``round(-0.04, 1)``, ``-1 * 0.0``...) must set the gauge to 0, as
    Prometheus does; a line ``-0|g`` is a delta of 0 that leaves the old value in place. The
    gauge was written twice since the previous flush: only its last value is sent."""
    metrics = make_facade(**{**statsd_to(statsd_daemon), "backends": ["statsd", "prometheus"]})
    level = metrics.gauge("shadowcat_queue_depth", "Queue depth")
    level.set(5)
    level.set(round(-0.04, 1))  # -0.0
    # Sent after the gauge lines, in the same datagram: once it is in, so are they.
    metrics.counter("shadowcat_sentinel_total", "Sentinel").inc()
    metrics.flush()
    # Prometheus: 0. (It showed -0.0, equal to 0, before the series store; gauge cells now
    # hold set(-0.0) as 0.0.)
    assert prometheus_samples(metrics)[("shadowcat_queue_depth", frozenset())] == 0
    statsd_daemon.wait_for_key("counters", "shadowcat.sentinel")
    gauges = statsd_daemon.gauges()
    assert gauges == {"shadowcat.queue_depth": 0}, (
        f"the StatsD backend sent set(-0.0) as a delta: {statsd_daemon.diagnostics()}"
    )


@pytest.mark.sink
def test_statsd_sample_rate_is_ignored_every_increment_counts(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade, caplog: pytest.LogCaptureFixture
) -> None:
    """Replaces the test of sampled counters (``1|c|@0.25`` lines, counted 4 times by the
    daemon): counters are now summed in process, so ``sample_rate`` is ignored, with a
    warning. 400 increments arrive as exactly 400, in one unsampled line."""
    increments = 400
    metrics = make_facade(**statsd_to(statsd_daemon, sample_rate=0.25))
    assert "sample_rate = 0.25 is ignored" in caplog.text
    child = metrics.counter("shadowcat_requests_total", "Requests", ["method"]).labels("ping")
    for _ in range(increments):
        child.inc()
    metrics.flush()
    expected = {"shadowcat.requests;method=ping": increments}
    assert settled_counters(statsd_daemon, expected) == expected, statsd_daemon.diagnostics()
    assert statsd_daemon.metrics_received == 1
    assert_no_bad_lines(statsd_daemon)


@pytest.mark.sink
def test_statsd_folded_names_with_prefix(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    """``tag_format = "none"``: label values (common labels first) folded into the dotted
    name after the prefix; dots and spaces in values become ``_``, an empty value ``_``."""
    metrics = make_facade(
        **statsd_to(statsd_daemon, tag_format="none", prefix="myapp.prod"),
        common_labels={"service": "shadowcat"},
    )
    record_catalog(metrics)
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method", "status"])
    requests.labels("v1.2 beta", "").inc(2)
    metrics.flush()

    base = "myapp.prod.shadowcat"
    counters = {
        f"{base}.requests.shadowcat.ping.ok": running_sum(REQUEST_AMOUNTS),
        f"{base}.requests.shadowcat.tools-call.error": 3,
        f"{base}.requests.shadowcat.v1_2_beta._": 2,
        "myapp.prod.metricsfacade.dropped.shadowcat.shadowcat_requests_total.negative_value": 1,
    }
    gauges = {
        f"{base}.active_sessions.shadowcat.stdio": 12.5,
        f"{base}.active_sessions.shadowcat.http": -7.25,
        f"{base}.active_sessions.shadowcat.sse": -3.5,
        f"{base}.active_sessions.shadowcat.ws": 6,
        f"{base}.temperature_celsius.shadowcat": -12.5,
    }
    timers = {
        f"{base}.message_size_bytes.shadowcat.in": [0, 512, 2048],
        f"{base}.request_duration.shadowcat.ping": [12.5, 250, 1500],
    }
    assert settled_counters(statsd_daemon, counters) == counters, statsd_daemon.diagnostics()
    assert settled_gauges(statsd_daemon, gauges) == gauges, statsd_daemon.diagnostics()
    assert settled_timers(statsd_daemon, timers) == timers, statsd_daemon.diagnostics()
    assert_no_bad_lines(statsd_daemon)


HOSTILE = "a|b:c#d,e\nf@g;h=i"


@pytest.mark.sink
@pytest.mark.parametrize(
    ("tag_format", "key"),
    [
        ("dogstatsd", "shadowcat.requests;method=a_b_c_d_e_f_g_h_i"),
        ("none", "shadowcat.requests.a_b_c_d_e_f_g_h_i"),
    ],
)
def test_statsd_hostile_label_values_cannot_break_lines(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade, tag_format: str, key: str
) -> None:
    """A label value holding every separator of the wire format stays one series: no bad
    line, no extra key, the other series unaffected. (Two lines: one per series since the
    series store, where each recording was a line before.)"""
    metrics = make_facade(**statsd_to(statsd_daemon, tag_format=tag_format))
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method"])
    requests.labels(HOSTILE).inc(2)
    requests.labels("ping").inc()
    requests.labels(HOSTILE).inc(3)
    metrics.flush()
    separator = ";method=" if tag_format == "dogstatsd" else "."
    expected = {key: 5, f"shadowcat.requests{separator}ping": 1}
    assert settled_counters(statsd_daemon, expected) == expected, statsd_daemon.diagnostics()
    # One line per series: the two increments of the hostile one are summed in process.
    assert statsd_daemon.metrics_received == 2
    assert_no_bad_lines(statsd_daemon)


# -- StatsD backend over TCP ----------------------------------------------------------------


@pytest.mark.sink
def test_statsd_tcp_values_and_stream_framing(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    """``protocol = "tcp"`` against the daemon's ``servers/tcp`` (it splits the stream at
    newlines): the catalog arrives exactly, and so do 6,000 more lines, which span many
    8 KB payloads (each must end with a newline, or lines merge at the joins)."""
    metrics = make_facade(
        backends=["statsd"],
        statsd={"host": statsd_daemon.host, "port": statsd_daemon.tcp_port, "protocol": "tcp"},
    )
    record_catalog(metrics)
    bulk = metrics.counter("shadowcat_bulk_total", "Bulk", ["n"])
    children = [bulk.labels(str(n)) for n in range(30)]
    for i in range(6_000):
        children[i % 30].inc()
    metrics.close()  # flushes, then closes the connection

    counters, gauges, timers = catalog_expectations()
    counters |= {f"shadowcat.bulk;n={n}": 200 for n in range(30)}
    assert settled_counters(statsd_daemon, counters) == counters, statsd_daemon.diagnostics()
    assert settled_gauges(statsd_daemon, gauges) == gauges, statsd_daemon.diagnostics()
    assert settled_timers(statsd_daemon, timers) == timers, statsd_daemon.diagnostics()
    assert_no_bad_lines(statsd_daemon)


# -- Datadog backend --------------------------------------------------------------------------


def record_datadog_sequence(metrics: mf.Metrics, *, histograms: bool) -> None:
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method", "status"])
    for amount in REQUEST_AMOUNTS:
        requests.labels("ping", "ok").inc(amount)
    requests.labels("tools/call", "error").inc(3)
    sessions = metrics.gauge("shadowcat_active_sessions", "Sessions", ["transport"])
    stdio = sessions.labels("stdio")
    stdio.set(10)
    stdio.inc(5)
    stdio.dec(3)
    stdio.inc(0.5)
    http = sessions.labels("http")
    http.inc(7)  # never set: starts from 0
    http.dec(2)
    if histograms:
        sizes = metrics.histogram("shadowcat_message_size_bytes", "Sizes", ["direction"])
        for size in (512, 2048, 0):
            sizes.labels("in").observe(size)
        duration = metrics.timer("shadowcat_request_duration_seconds", "Latency", ["method"])
        for seconds in (0.25, 1.5, 0.0125):
            duration.labels("ping").observe(seconds)


@pytest.mark.sink
@pytest.mark.usefixtures("no_datadog_environment")
@pytest.mark.parametrize("histogram_type", ["h", "d"])
def test_datadog_backend_against_the_daemon(
    statsd_daemon: sinks.StatsdDaemon,
    udp_sink: sinks.UdpLineSink,
    make_facade: MakeFacade,
    histogram_type: str,
) -> None:
    """DogStatsD lines: counters and gauges exact through the daemon (the backend sends
    absolute gauge values, never deltas); the same sequence with histograms and a timer, read
    by a strict DogStatsD parser, gives every observation (milliseconds for timers).

    Histograms no longer go to the daemon: the backend packs a flush's observations into one
    ``name:v1:v2:v3|h`` line (DogStatsD protocol 1.1), for a DogStatsD agent. Etsy's daemon
    splits a line at every ``:`` and wants a type on each bit, so it counts ``v1`` and ``v2``
    as bad lines and keeps only ``v3`` (checked by hand with 0.9.0); before, one value per
    line, it held the sum of the observations as a counter."""
    table = {"histogram_type": histogram_type, "namespace": "dd", "constant_tags": {"env": "test"}}
    through_daemon = make_facade(
        backends=["datadog"],
        datadog={"host": statsd_daemon.host, "port": statsd_daemon.port, **table},
    )
    record_datadog_sequence(through_daemon, histograms=False)
    through_daemon.flush()
    parsed = make_facade(
        backends=["datadog"], datadog={"host": udp_sink.host, "port": udp_sink.port, **table}
    )
    record_datadog_sequence(parsed, histograms=True)
    parsed.flush()

    tags = "env=test"
    counters = {
        f"dd.shadowcat.requests;{tags};method=ping;status=ok": running_sum(REQUEST_AMOUNTS),
        f"dd.shadowcat.requests;{tags};method=tools-call;status=error": 3,
    }
    gauges = {
        f"dd.shadowcat.active_sessions;{tags};transport=stdio": 12.5,
        f"dd.shadowcat.active_sessions;{tags};transport=http": 5,
    }
    assert settled_counters(statsd_daemon, counters) == counters, statsd_daemon.diagnostics()
    assert settled_gauges(statsd_daemon, gauges) == gauges, statsd_daemon.diagnostics()
    assert statsd_daemon.timers() == {}
    assert_no_bad_lines(statsd_daemon)

    env = ("env", "test")
    size_key = ("dd.shadowcat.message_size_bytes", (env, ("direction", "in")))
    duration_key = ("dd.shadowcat.request_duration", (env, ("method", "ping")))
    view = SinkView.of(udp_sink.wait(lambda lines: len(lines) >= 6))
    assert view.counters == {
        ("dd.shadowcat.requests", (env, ("method", "ping"), ("status", "ok"))): running_sum(
            REQUEST_AMOUNTS
        ),
        ("dd.shadowcat.requests", (env, ("method", "tools/call"), ("status", "error"))): 3,
    }
    assert view.gauges == {
        ("dd.shadowcat.active_sessions", (env, ("transport", "stdio"))): 12.5,
        ("dd.shadowcat.active_sessions", (env, ("transport", "http"))): 5,
    }
    assert sorted_lists(view.values) == {size_key: [0, 512, 2048], duration_key: [12.5, 250, 1500]}
    assert view.counts == {size_key: 3, duration_key: 3}
    assert view.types[size_key] == view.types[duration_key] == {histogram_type}
    assert len(udp_sink.lines()) == 2 + 2 + 2  # one line per series, the values packed
    assert udp_sink.drops() in (0, None)


# -- several backends at once ---------------------------------------------------------------


def prometheus_samples(metrics: mf.Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of the Prometheus backend's exposition."""
    text = metrics.backend("prometheus").render(None)[0].decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.sink
@pytest.mark.usefixtures("no_datadog_environment")
def test_prometheus_statsd_and_datadog_agree(
    statsd_daemon: sinks.StatsdDaemon, udp_sink: sinks.UdpLineSink, make_facade: MakeFacade
) -> None:
    """One recorded sequence fanned out to three backends: Prometheus, StatsD (the daemon) and
    Datadog end with the same values. Datadog now goes to a strict DogStatsD parser rather
    than a second daemon: its histogram lines pack several values (protocol 1.1), which the
    Etsy daemon cannot read (see ``test_datadog_backend_against_the_daemon``); so the
    Datadog side is checked for every observation, not only their sum as before."""
    metrics = make_facade(
        backends=["prometheus", "statsd", "datadog"],
        common_labels={"service": "shadowcat"},
        statsd={"host": statsd_daemon.host, "port": statsd_daemon.port},
        datadog={"host": udp_sink.host, "port": udp_sink.port, "histogram_type": "h"},
    )
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method"])
    sessions = metrics.gauge("shadowcat_active_sessions", "Sessions", ["transport"])
    sizes = metrics.histogram("shadowcat_message_size_bytes", "Sizes", buckets=[100, 1000])
    duration = metrics.timer("shadowcat_request_duration_seconds", "Latency", ["method"])
    methods = ("ping", "tools/list", "tools/call")
    for i in range(60):
        method = methods[i % 3]
        requests.labels(method).inc(1 + i % 4 * 0.25)
        sessions.labels("stdio").inc(2)
        if i % 3 == 0:
            sessions.labels("stdio").dec()
        sizes.observe(i * 37)
        duration.labels(method).observe(i % 7 / 8)  # 0 .. 0.75 s, exact in binary
    sessions.labels("http").set(42)
    sessions.labels("http").dec(0.5)
    metrics.flush()

    prom = prometheus_samples(metrics)
    service = ("service", "shadowcat")

    def prom_value(name: str, **labels: str) -> float:
        return prom[(name, frozenset({service, *labels.items()}))]

    keys_a: dict[str, float] = {}
    timers_a: dict[str, list[float]] = {}
    counters_b: dict[SeriesKey, float] = {}
    values_b: dict[SeriesKey, list[float]] = {}
    for method in methods:
        key = f"shadowcat.requests;service=shadowcat;method={method.replace('/', '-')}"
        keys_a[key] = prom_value("shadowcat_requests_total", method=method)
        counters_b[("shadowcat.requests", (service, ("method", method)))] = keys_a[key]
        key = f"shadowcat.request_duration;service=shadowcat;method={method.replace('/', '-')}"
        timers_a[key] = [i % 7 / 8 * 1000 for i in range(60) if methods[i % 3] == method]
        values_b[("shadowcat.request_duration", (service, ("method", method)))] = timers_a[key]
        assert len(timers_a[key]) == prom_value(
            "shadowcat_request_duration_seconds_count", method=method
        )
        assert sum(timers_a[key]) == 1000 * prom_value(
            "shadowcat_request_duration_seconds_sum", method=method
        )
    timers_a["shadowcat.message_size_bytes;service=shadowcat"] = [i * 37 for i in range(60)]
    values_b[("shadowcat.message_size_bytes", (service,))] = [i * 37 for i in range(60)]
    assert len(timers_a["shadowcat.message_size_bytes;service=shadowcat"]) == prom_value(
        "shadowcat_message_size_bytes_count"
    )
    assert sum(i * 37 for i in range(60)) == prom_value("shadowcat_message_size_bytes_sum")
    gauges = {
        f"shadowcat.active_sessions;service=shadowcat;transport={transport}": prom_value(
            "shadowcat_active_sessions", transport=transport
        )
        for transport in ("stdio", "http")
    }
    assert gauges == {
        "shadowcat.active_sessions;service=shadowcat;transport=stdio": 100,
        "shadowcat.active_sessions;service=shadowcat;transport=http": 41.5,
    }
    gauges_b = {
        ("shadowcat.active_sessions", (service, ("transport", "stdio"))): 100,
        ("shadowcat.active_sessions", (service, ("transport", "http"))): 41.5,
    }

    assert settled_counters(statsd_daemon, keys_a) == keys_a, statsd_daemon.diagnostics()
    assert settled_gauges(statsd_daemon, gauges) == gauges, statsd_daemon.diagnostics()
    assert settled_timers(statsd_daemon, timers_a) == sorted_lists(timers_a), (
        statsd_daemon.diagnostics()
    )
    assert_no_bad_lines(statsd_daemon)

    view = SinkView.of(udp_sink.wait(lambda lines: len(SinkView.of(lines).gauges) == 2))
    assert view.counters == counters_b
    assert view.gauges == gauges_b
    assert sorted_lists(view.values) == sorted_lists(values_b)
    assert view.counts == {key: len(values) for key, values in values_b.items()}
    assert udp_sink.drops() in (0, None)


# -- a large burst ----------------------------------------------------------------------------

BURST_INCREMENTS = 20_000
BURST_SERIES = 50
BURST_FLUSHES = 20


@pytest.mark.sink
def test_statsd_udp_burst_arrives_complete(
    statsd_daemon: sinks.StatsdDaemon, make_facade: MakeFacade
) -> None:
    """20,000 increments over 50 label sets, recorded as fast as Python can, with 20 flushes
    along the way: the daemon's totals equal what was recorded, to the unit, and each flush
    sent one line per series that changed (50), packed into full datagrams.

    Before the series store each increment was a line (about 800 full datagrams, more than
    the daemon's stock UDP buffer holds, so the burst went out in chunks the buffer could
    take). Now a flush sends at most 50 lines whatever the rate, so the burst needs no
    pacing: what matters is that the sums stay exact and the lines per flush are the series
    that changed, never the recordings."""
    metrics = make_facade(**statsd_to(statsd_daemon, flush_interval_secs=3600))
    requests = metrics.counter("shadowcat_requests_total", "Requests", ["method", "client"])
    children = [requests.labels(f"method{n}", f"client{n}") for n in range(BURST_SERIES)]
    per_flush = BURST_INCREMENTS // BURST_FLUSHES
    for i in range(BURST_INCREMENTS):
        children[i % BURST_SERIES].inc()
        if (i + 1) % per_flush == 0:
            metrics.flush()

    expected = {
        f"shadowcat.requests;method=method{n};client=client{n}": BURST_INCREMENTS / BURST_SERIES
        for n in range(BURST_SERIES)
    }
    # Also: no metricsfacade.backend_dropped key (the library dropped nothing either).
    assert settled_counters(statsd_daemon, expected) == expected, statsd_daemon.diagnostics()
    counters = statsd_daemon.counters()
    assert counters[sinks.STATSD_METRICS] == BURST_FLUSHES * BURST_SERIES, counters
    assert statsd_daemon.udp_drops() in (0, None), statsd_daemon.diagnostics()
    # Datagrams hold at most 1,432 bytes and are packed: per flush, the fewest that hold the
    # 50 lines (each of which now carries its increase, 20).
    lines = [
        f"shadowcat.requests:{per_flush // BURST_SERIES}|c|#method:method{n},client:client{n}"
        for n in range(BURST_SERIES)
    ]
    fewest = math.ceil(sum(len(line) + 1 for line in lines) / (UDP_MAX_PACKET + 1))
    assert counters[sinks.STATSD_PACKETS] == BURST_FLUSHES * fewest, counters
    assert_no_bad_lines(statsd_daemon)


# -- the harness itself -----------------------------------------------------------------------


def test_parse_inspected_reads_what_node_prints() -> None:
    """The management console prints util.inspect output; shapes seen from Node 20."""
    counters = (
        "{\n  'statsd.bad_lines_seen': 0,\n  'a.b;method=GET;status=ok': 3.5,\n"
        "  n: 1e+21,\n  'x-y': -0,\n  big: Infinity\n}\n"
    )
    assert sinks.parse_inspected(counters) == {
        "statsd.bad_lines_seen": 0,
        "a.b;method=GET;status=ok": 3.5,
        "n": 1e21,
        "x-y": 0,
        "big": math.inf,
    }
    assert math.copysign(1, sinks.parse_inspected("{ g: -0 }")["g"]) == -1
    assert sinks.parse_inspected("{}") == {}
    timers = (
        "{\n  't.x;k=v': [ 250, 1.5 ],\n  empty: [],\n  many: [\n     0,  1,\n    12, 13\n  ]\n}"
    )
    assert sinks.parse_inspected(timers) == {
        "t.x;k=v": [250, 1.5],
        "empty": [],
        "many": [0, 1, 12, 13],
    }
    with pytest.raises(ValueError, match="cut an array short"):
        sinks.parse_inspected("{ t: [\n 1, 2,\n ... 20 more items\n] }")
    with pytest.raises(ValueError, match="cannot parse"):
        sinks.parse_inspected("{ t: <ref *1> }")
