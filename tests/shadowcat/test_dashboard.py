"""The Grafana dashboard and the Prometheus alert rules shipped in examples/.

- The dashboard is importable into Grafana 10+ (a ``datasource`` variable, every panel and
  query on it), its quantiles are computed the right way (``rate()`` of ``_bucket`` series,
  summed ``by (le)``: the brief's own example did neither), and it covers the whole catalog.
- promtool accepts the alert rules, their unit tests pass, and every alert has a test where
  it fires and one where it does not.
- Against a real Prometheus scraping a real instrumented process (a subprocess serving
  traffic through ``metricsfacade.shadowcat``), every query of every panel returns data.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from support import sinks

from metricsfacade.shadowcat.catalog import CATALOG

ROOT = support.REPO
DASHBOARD = ROOT / "examples" / "grafana" / "shadowcat-dashboard.json"
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "examples" / "prometheus" / "alerts_test.yml"

PROMETHEUS_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: The metric families the brief's dashboard must show, and metricsfacade's own drops.
FAMILIES = (
    "shadowcat_requests_total",
    "shadowcat_request_duration_seconds",
    "shadowcat_request_size_bytes",
    "shadowcat_response_size_bytes",
    "shadowcat_active_sessions",
    "shadowcat_session_duration_seconds",
    "shadowcat_proxy_latency_seconds",
    "shadowcat_upstream_errors_total",
    "shadowcat_circuit_breaker_state",
    "shadowcat_rate_limit_exceeded_total",
    "shadowcat_memory_usage_bytes",
    "shadowcat_cpu_usage_percent",
    "shadowcat_goroutines",
    "shadowcat_threads",
    "shadowcat_open_fds",
    "shadowcat_uptime_seconds",
    "shadowcat_tape_size_bytes",
    "shadowcat_tape_operations_total",
    "metricsfacade_dropped_total",
    "metricsfacade_cardinality_overflow_total",
    "metricsfacade_backend_dropped_total",
)

#: What the Grafana variables stand for when a query is sent to Prometheus directly.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "instance": ".*",
}
VARIABLE_RE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")

#: How long the real-Prometheus test waits for every panel to have data. The first scrape
#: lands 5-6 s after Prometheus starts; rate() over 1m needs a second one.
PANEL_DATA_TIMEOUT_SECS = 40.0


# -- reading the dashboard ------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title / refId, expr)`` for every query of every panel."""
    return [
        (f"{panel['title']} / {target.get('refId', '?')}", target["expr"])
        for panel in query_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute(expr: str) -> str:
    """The PromQL Grafana would send: its variables replaced (an unknown one raises)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unexpected variable ${name} in {expr!r}")
        return VARIABLES[name]

    return VARIABLE_RE.sub(value, expr)


# -- the quantile check ---------------------------------------------------------------------

QUANTILE_CALL = "histogram_quantile("
#: ``sum by (le, ...) (...)`` or ``sum(...) by (..., le)``
SUM_BY_LE_RE = re.compile(r"\bsum\b.*\bby\s*\((?:[\w\s,]*,)?\s*le\s*(?:,[\w\s]*)?\)", re.DOTALL)
RATE_OF_BUCKET_RE = re.compile(r"\b(?:rate|increase)\(\s*\w+_bucket\b")
BUCKET_RE = re.compile(r"\w+_bucket\b")


def quantile_problems(text: str) -> list[str]:
    """Every ``histogram_quantile`` call in ``text`` must take a ``_bucket`` series under
    ``rate()`` (or ``increase()``), summed ``by (le)``: a list of the calls that do not."""
    problems = []
    start = text.find(QUANTILE_CALL)
    while start != -1:
        depth, end = 0, start + len(QUANTILE_CALL) - 1
        for position in range(end, len(text)):
            depth += {"(": 1, ")": -1}.get(text[position], 0)
            end = position
            if depth == 0:
                break
        call = text[start : end + 1]
        if not BUCKET_RE.search(call):
            problems.append(f"no _bucket series: {call}")
        elif not RATE_OF_BUCKET_RE.search(call):
            problems.append(f"_bucket series without rate(): {call}")
        elif not SUM_BY_LE_RE.search(call):
            problems.append(f"buckets not summed by (le): {call}")
        start = text.find(QUANTILE_CALL, end)
    return problems


@pytest.mark.parametrize(
    "expr",
    [
        # the brief's own P95 and proxy overhead panels
        "histogram_quantile(0.95, shadowcat_request_duration_seconds)",
        "histogram_quantile(0.95, shadowcat_proxy_latency_seconds)",
        # half fixes
        "histogram_quantile(0.95, shadowcat_request_duration_seconds_bucket)",
        "histogram_quantile(0.95, rate(shadowcat_request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.95, sum(rate(shadowcat_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.95, sum by (method) (rate(x_bucket[5m])))",
        "histogram_quantile(0.95, sum by (le) (x_bucket))",
        "rate(x_count[5m]) / histogram_quantile(0.5, sum by (le) (x_bucket))",
    ],
)
def test_quantile_check_rejects_wrong_quantiles(expr):
    assert quantile_problems(expr), f"the check accepted {expr!r}"


@pytest.mark.parametrize(
    "expr",
    [
        "histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))",
        'histogram_quantile(0.99, sum by (method, le) (rate(x_bucket{a=~"b"}[$__rate_interval])))',
        "histogram_quantile(0.5, sum(rate(x_bucket[5m])) by (le, upstream))",
        "sum(rate(x_count[1m]))",
    ],
)
def test_quantile_check_accepts_right_quantiles(expr):
    assert quantile_problems(expr) == []


# -- the dashboard --------------------------------------------------------------------------


def test_dashboard_is_importable_into_grafana_10():
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41, dashboard["schemaVersion"]
    assert dashboard["title"], "a dashboard needs a title"
    assert dashboard["uid"], "a dashboard needs a uid (links to it use it)"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables.get("datasource")
    assert datasource is not None, f"no datasource variable among {sorted(variables)}"
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == PROMETHEUS_DATASOURCE, variable["name"]

    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    wrong = []
    for panel in query_panels(dashboard):
        title = panel.get("title")
        grid = panel["gridPos"]
        if not (grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24):
            wrong.append(f"{title}: gridPos {grid}")
        if panel.get("datasource") != PROMETHEUS_DATASOURCE:
            wrong.append(f"{title}: datasource {panel.get('datasource')}")
        for target in panel.get("targets", []):
            if target.get("datasource") != PROMETHEUS_DATASOURCE:
                wrong.append(f"{title} / {target.get('refId')}: datasource {target}")
            if not target.get("legendFormat"):
                wrong.append(f"{title} / {target.get('refId')}: no legend")
        if not panel["fieldConfig"]["defaults"].get("unit"):
            wrong.append(f"{title}: no unit")
        if panel["type"] not in ("timeseries", "stat"):
            wrong.append(f"{title}: panel type {panel['type']}")
    assert wrong == []


def test_every_panel_has_a_query():
    panels = query_panels(load_dashboard())
    assert len(panels) >= 15
    empty = [
        panel.get("title")
        for panel in panels
        if not any(target.get("expr", "").strip() for target in panel.get("targets", []))
    ]
    assert empty == [], f"panels without a query: {empty}"


def test_dashboard_quantiles_use_rate_and_sum_by_le():
    queries = panel_queries(load_dashboard())
    assert any(QUANTILE_CALL in expr for _, expr in queries), "no quantile panel at all"
    problems = [f"{where}: {p}" for where, expr in queries for p in quantile_problems(expr)]
    assert problems == []


def test_alert_quantiles_use_rate_and_sum_by_le():
    text = ALERTS.read_text()
    assert QUANTILE_CALL in text
    assert quantile_problems(text) == []


def test_dashboard_covers_every_metric_family():
    exprs = "\n".join(expr for _, expr in panel_queries(load_dashboard()))
    missing = [
        family
        for family in FAMILIES
        if not re.search(rf"\b{family}(?:_bucket|_sum|_count)?\b", exprs)
    ]
    assert missing == [], f"no panel shows {missing}"


def test_every_catalog_metric_is_on_the_dashboard():
    """A metric added to (or renamed in) the catalog needs a panel."""
    assert {entry.name for entry in CATALOG} <= set(FAMILIES)


def test_dashboard_queries_are_valid_promql(promtool_bin, tmp_path):
    """promtool parses every query (written as recording rules, with variables substituted)."""
    queries = panel_queries(load_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": substitute(expr)}
                    for index, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    result = run_promtool(promtool_bin, "check", "rules", str(path))
    assert result.returncode == 0, sinks.describe_run(result)
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, sinks.describe_run(result)


# -- the alert rules ------------------------------------------------------------------------


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules(promtool_bin):
    result = run_promtool(promtool_bin, "check", "rules", str(ALERTS))
    assert result.returncode == 0, sinks.describe_run(result)
    assert "SUCCESS" in result.stdout, sinks.describe_run(result)


def test_promtool_test_rules(promtool_bin):
    result = run_promtool(promtool_bin, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, sinks.describe_run(result)
    assert "SUCCESS" in result.stdout, sinks.describe_run(result)


def alert_blocks() -> dict[str, str]:
    text = ALERTS.read_text()
    blocks = re.split(r"^\s*- alert: ", text, flags=re.MULTILINE)[1:]
    return {block.split()[0]: block for block in blocks}


def test_every_alert_has_severity_and_annotations():
    blocks = alert_blocks()
    assert len(blocks) >= 5, sorted(blocks)
    incomplete = [
        name
        for name, block in blocks.items()
        if not (
            re.search(r"^\s+severity: (warning|critical)\s*$", block, re.MULTILINE)
            and re.search(r"^\s+summary: \S", block, re.MULTILINE)
            and re.search(r"^\s+description: \S", block, re.MULTILINE)
        )
    ]
    assert incomplete == [], f"alerts without a severity, summary or description: {incomplete}"


def test_every_alert_is_tested_firing_and_quiet():
    text = ALERTS_TEST.read_text()
    cases = re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:(.*)", text)
    fired = {name for name, rest in cases if rest.strip() != "[]"}
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    alerts = set(alert_blocks())
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"
    assert (fired | quiet) - alerts == set(), "tests of alerts that do not exist"


# -- a real Prometheus scraping a real instrumented process ---------------------------------

#: Serves shadowcat traffic until killed. Deterministic: every round records the same label
#: sets, so no series appears after the first round (the cardinality limit is reached on
#: purpose, right after it, by an unbounded label).
TRAFFIC_SCRIPT = """\
import asyncio
import socket
import sys

import metricsfacade as mf
from metricsfacade.shadowcat import ShadowcatMetrics, SystemCollector

CARDINALITY_LIMIT = 400
METHODS = ("initialize", "tools/list", "tools/call", "resources/read", "prompts/get", "x/bogus")
OUTCOMES = {"stdio": ("ok", "raise", "ok", "timeout", "ok", "cancel"),
            "http": (200, 200, 500, 200, 429, 204)}


def closed_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def request(sc, method, transport, upstream, outcome, size):
    try:
        async with sc.track_request(method, transport, upstream=upstream) as req:
            req.request_size(size)
            with req.upstream_wait():
                await asyncio.sleep(0.002)
            if outcome == "raise":
                raise RuntimeError("a JSON-RPC error response")
            if outcome == "timeout":
                raise TimeoutError
            if outcome == "cancel":
                raise asyncio.CancelledError
            if isinstance(outcome, int):
                req.status = outcome
            req.response_size(size * 10)
    except (RuntimeError, TimeoutError, asyncio.CancelledError):
        pass


async def session(sc, index):
    transport = "http" if index % 2 else "stdio"
    upstream = ("local", "remote")[index // 2 % 2]
    async with sc.session():
        for position, method in enumerate(METHODS):
            outcome = OUTCOMES[transport][(index + position) % len(OUTCOMES[transport])]
            await request(sc, method, transport, upstream, outcome, 100 * (position + 1))


async def main():
    metrics = mf.configure(
        {
            "port": 0,
            "collection_interval_secs": 1,
            "cardinality_limit": CARDINALITY_LIMIT,
            # an agent that is not there: undelivered lines for the self-monitoring row
            "backends": ["prometheus", "statsd"],
            "statsd": {"host": "127.0.0.1", "port": closed_udp_port()},
        },
        environ={},
    )
    sc = ShadowcatMetrics(metrics)
    SystemCollector(metrics)  # created in the loop: it counts this loop's tasks
    long_session = sc.session()
    await long_session.__aenter__()  # open for the whole run: active sessions >= 1
    print(metrics.endpoint_url, flush=True)
    states = ("closed", "open", "half_open")
    rounds = 0
    while True:
        await asyncio.gather(*(session(sc, index) for index in range(4)))
        sc.upstream_error("remote", "timeout")
        sc.upstream_error("local", "connection_refused")
        sc.circuit_breaker_state("local", "closed")
        sc.circuit_breaker_state("remote", states[rounds % 3])
        sc.rate_limit_exceeded("per_client", "client-a")
        sc.rate_limit_exceeded("global", "client-b")
        sc.tape_operation("record")
        sc.tape_operation("replay")
        sc.tape_size("stdio", 4096)
        sc.tape_size("http", 150_000)
        sc.tape_size("stdio", float("nan"))  # dropped: metricsfacade_dropped_total
        if rounds == 0:
            keys = metrics.counter("demo_cache_lookups_total", "Lookups by key", ["key"])
            for key in range(CARDINALITY_LIMIT):
                keys.labels(f"key-{key}").inc()
        keys.labels(f"key-{CARDINALITY_LIMIT + rounds}").inc()  # folded: overflow
        rounds += 1
        await asyncio.sleep(0.1)


asyncio.run(main())
"""

#: Panels whose values are ratios: every value must be in [0, 1].
RATIO_UNITS = frozenset({"percentunit"})


def start_traffic(tmp_path: Path) -> tuple[subprocess.Popen[str], str, Path]:
    """Run the traffic script; return the process, its endpoint's base URL and its log."""
    script = tmp_path / "serve_shadowcat_traffic.py"
    script.write_text(TRAFFIC_SCRIPT)
    log_path = tmp_path / "traffic.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("METRICSFACADE_")}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=tmp_path,
            env=environ,
        )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        stop(process)
        raise AssertionError(
            f"the traffic script printed {line!r} instead of its endpoint URL "
            f"(exit code {process.poll()})\n{sinks.log_tail(log_path)}"
        )
    return process, line, log_path


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(sinks.value(sample)) for sample in result)


@pytest.mark.sink
def test_every_panel_has_data_from_a_real_prometheus(tmp_path, start_prometheus):
    dashboard = load_dashboard()
    units = {
        panel["title"]: panel["fieldConfig"]["defaults"].get("unit")
        for panel in query_panels(dashboard)
    }
    queries = {where: substitute(expr) for where, expr in panel_queries(dashboard)}
    process, base_url, log_path = start_traffic(tmp_path)
    try:
        prom = start_prometheus({"shadowcat": f"{base_url}/metrics"})
        results: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + PANEL_DATA_TIMEOUT_SECS
        while True:
            for where, promql in queries.items():
                if where not in results:
                    result = prom.query_once(promql)
                    if has_data(result):
                        results[where] = result
            if len(results) == len(queries) or time.monotonic() >= deadline:
                break
            assert process.poll() is None, (
                f"the traffic script exited ({process.returncode})\n{sinks.log_tail(log_path)}"
            )
            time.sleep(0.5)
        no_data = sorted(set(queries) - set(results))
        assert no_data == [], (
            f"{len(no_data)} of {len(queries)} panel queries still had no data after "
            f"{PANEL_DATA_TIMEOUT_SECS:g} s:\n"
            + "\n".join(f"  {where}: {queries[where]}" for where in no_data)
            + f"\n{prom.diagnostics()}\ntraffic script log:\n{sinks.log_tail(log_path)}"
        )
        out_of_range = [
            f"{where}: {sinks.value(sample)}"
            for where, result in results.items()
            if units[where.rsplit(" / ", 1)[0]] in RATIO_UNITS
            for sample in result
            if not (math.isnan(sinks.value(sample)) or 0 <= sinks.value(sample) <= 1)
        ]
        assert out_of_range == [], f"ratios outside [0, 1]: {out_of_range}"
    finally:
        stop(process)
