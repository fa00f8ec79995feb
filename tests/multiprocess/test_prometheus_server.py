"""A real Prometheus server scraping multi-process metrics every 0.5 s while gunicorn's 3 sync
workers recycle every ~25 requests and 3 of them are SIGKILLed (see test_recycling.py for
the load): Prometheus must never see a counter or a histogram sample reset, and its last
scrape must hold exactly what the requests that got a 200 imply.

Set-up: as in test_recycling.py, plus a scrape job pointing at the app's mounted exposition
(any worker answers for all of them)::

    scrape_configs:
      - job_name: myapp
        metrics_path: /metrics/
        static_configs: [{targets: ["127.0.0.1:8000"]}]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from mp_checks import Expected, Service, run_load_with_kills
from support import eventually, require_module, servers, sinks

require_module("gunicorn")
require_module("werkzeug")
require_module("prometheus_client")

pytestmark = pytest.mark.sink

Serve = Callable[..., Service]
StartPrometheus = Callable[[Mapping[str, str]], sinks.PrometheusServer]

SETUP = servers.Setup("prometheus", "gunicorn", "mp_wsgi:app", 3, max_requests=25, jitter=5)
REQUESTS = 1600
KILLS = 3
#: every counter-like series the app exposes
MONOTONIC = ("mp_requests_total", "mp_value_bucket", "mp_value_count", "mp_value_sum")


def test_prometheus_sees_no_reset_and_the_exact_count(
    serve: Serve, start_prometheus_fast: StartPrometheus
) -> None:
    service = serve(SETUP, "dict")
    prom = start_prometheus_fast({"mp": service.metrics_url})
    prom.query('up{job="mp"} == 1')  # polls until the first scrape succeeded

    values, victims = run_load_with_kills(service, REQUESTS, KILLS)
    expected = Expected.of(values)

    def last_count() -> float | None:
        return servers.query_value(prom, 'sum(mp_requests_total{job="mp"})')

    eventually(
        lambda: last_count() == expected.count,
        20,
        0.2,
        message=lambda: (
            f"Prometheus' last sum(mp_requests_total) {last_count()}, requests answered 200: "
            f"{expected.count} (killed {victims})\n{prom.diagnostics()}"
        ),
    )
    scraped = {
        sample["metric"]["v"]: sinks.value(sample)
        for sample in prom.query_once('mp_requests_total{job="mp"}')
    }
    assert scraped == expected.requests
    assert servers.query_value(prom, 'mp_value_count{job="mp"}') == expected.count
    assert servers.query_value(prom, 'mp_value_sum{job="mp"}') == expected.sum

    for name in MONOTONIC:
        promql = f'sum(resets({name}{{job="mp"}}[5m]))'
        assert servers.query_value(prom, promql) == 0, f"{promql}\n{prom.diagnostics()}"
    # Prometheus saw the run itself, not only its end.
    scrapes = servers.query_value(prom, 'count_over_time(mp_value_count{job="mp"}[5m])') or 0
    changes = servers.query_value(prom, 'changes(mp_value_count{job="mp"}[5m])') or 0
    assert scrapes >= 8, f"{scrapes} scrapes\n{prom.diagnostics()}"
    assert changes >= 5, f"{changes} changes\n{prom.diagnostics()}"
