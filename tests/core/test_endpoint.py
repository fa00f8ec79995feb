"""The HTTP endpoint: /metrics (or the configured path), /health and /ready.

Every test talks to a real server over real sockets with the standard library's HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gzip
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import require_module

import metricsfacade as mf

require_module("prometheus_client")
from prometheus_client.openmetrics.parser import text_string_to_metric_families  # noqa: E402

COUNTER_LINE = 't_requests_total{method="ping"} 3.0'
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """One request on a fresh connection; the body is returned as sent (never decompressed)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=5, context=context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def assert_refused(url: str) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=2).close()


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def metrics(serve_facade: Callable[..., mf.Metrics]) -> mf.Metrics:
    """A facade serving on a free port, with t_requests_total{method="ping"} at 3."""
    facade = serve_facade(readiness_timeout_secs=0.3)
    facade.counter("t_requests_total", "Requests handled", labels=["method"]).labels("ping").inc(3)
    return facade


@pytest.fixture
def url(metrics: mf.Metrics) -> str:
    assert metrics.endpoint_url is not None
    return metrics.endpoint_url


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_serves_prometheus_text_with_recorded_values(url: str) -> None:
    response = fetch(f"{url}/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert COUNTER_LINE in response.text.splitlines()


def test_metrics_negotiates_openmetrics(url: str) -> None:
    response = fetch(f"{url}/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    samples = [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "t_requests_total"
    ]
    assert [(sample.labels, sample.value) for sample in samples] == [({"method": "ping"}, 3.0)]


def test_metrics_is_gzipped_when_the_client_accepts_gzip(url: str) -> None:
    response = fetch(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert COUNTER_LINE in gzip.decompress(response.body).decode()


def test_metrics_is_not_gzipped_unless_asked(url: str) -> None:
    response = fetch(f"{url}/metrics")
    assert response.headers["Content-Encoding"] is None
    assert COUNTER_LINE in response.text


@pytest.mark.parametrize("accept_encoding", ["gzip;q=0, identity", "*, gzip;q=0"])
def test_metrics_is_not_gzipped_when_the_client_refuses_gzip(
    url: str, accept_encoding: str
) -> None:
    # RFC 9110, section 12.5.3: q=0 means "not acceptable"; "*" covers only unlisted codings.
    response = fetch(f"{url}/metrics", headers={"Accept-Encoding": accept_encoding})
    assert response.headers["Content-Encoding"] is None
    assert COUNTER_LINE in response.text


def test_metrics_ignores_the_query_string(url: str) -> None:
    response = fetch(f"{url}/metrics?x=1")
    assert response.status == 200
    assert COUNTER_LINE in response.text


def test_custom_path_serves_the_exposition_and_metrics_is_gone(
    serve_facade: Callable[..., mf.Metrics],
) -> None:
    m = serve_facade(path="/custom")
    m.counter("t_requests_total", "help", labels=["method"]).labels("ping").inc(3)
    assert COUNTER_LINE in fetch(f"{m.endpoint_url}/custom").text
    assert fetch(f"{m.endpoint_url}/metrics").status == 404


def test_render_failure_is_a_500_without_details(
    metrics: mf.Metrics, url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_render(accept: str | None) -> tuple[bytes, str]:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(metrics._endpoint, "_render", broken_render)
    with caplog.at_level(logging.ERROR, logger="metricsfacade.endpoint"):
        response = fetch(f"{url}/metrics")
    assert response.status == 500
    assert "Traceback" not in response.text
    assert "secret detail" not in response.text
    assert "secret detail" in caplog.text  # the detail goes to the log instead


def test_metrics_is_404_without_a_prometheus_backend(
    serve_facade: Callable[..., mf.Metrics],
) -> None:
    m = serve_facade(backends=["memory"])
    response = fetch(f"{m.endpoint_url}/metrics")
    assert response.status == 404
    assert "no prometheus backend" in response.text
    assert fetch(f"{m.endpoint_url}/health").status == 200


# -- /health and /ready -----------------------------------------------------------------------


def test_health_is_ok_json(url: str) -> None:
    response = fetch(f"{url}/health")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_head_health_has_no_body(url: str) -> None:
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=5) as sock:
        sock.sendall(b"HEAD /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        raw = b"".join(iter(lambda: sock.recv(4096), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert body == b""


def test_ready_without_checks_is_200(url: str) -> None:
    response = fetch(f"{url}/ready")
    assert response.status == 200
    assert response.json()["status"] == "ready"


def test_ready_with_a_passing_check_is_200(metrics: mf.Metrics, url: str) -> None:
    metrics.add_readiness_check("db", lambda: True)
    assert fetch(f"{url}/ready").status == 200


def test_ready_names_a_check_returning_false(metrics: mf.Metrics, url: str) -> None:
    metrics.add_readiness_check("db", lambda: False)
    response = fetch(f"{url}/ready")
    assert response.status == 503
    assert response.headers["Content-Type"] == "application/json"
    assert list(response.json()["failing"]) == ["db"]


def test_ready_names_a_raising_check_without_a_traceback(metrics: mf.Metrics, url: str) -> None:
    def check() -> bool:
        raise ConnectionError("db unreachable")

    metrics.add_readiness_check("db", check)
    response = fetch(f"{url}/ready")
    assert response.status == 503
    assert "db unreachable" in response.json()["failing"]["db"]
    assert "Traceback" not in response.text


def test_ready_times_out_a_slow_check_quickly(metrics: mf.Metrics, url: str) -> None:
    release = threading.Event()
    metrics.add_readiness_check("slow", lambda: release.wait(5))
    try:
        started = time.monotonic()
        response = fetch(f"{url}/ready")
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert response.status == 503
    assert "timed out" in response.json()["failing"]["slow"]
    assert elapsed < 2.0


def test_ready_fails_a_check_raising_a_base_exception(metrics: mf.Metrics, url: str) -> None:
    def check() -> bool:
        raise asyncio.CancelledError("probe cancelled")  # a BaseException, not an Exception

    metrics.add_readiness_check("db", check)
    response = fetch(f"{url}/ready")
    assert response.status == 503
    assert list(response.json()["failing"]) == ["db"]


def test_removing_a_failing_check_makes_ready_pass(metrics: mf.Metrics, url: str) -> None:
    metrics.add_readiness_check("db", lambda: False)
    assert fetch(f"{url}/ready").status == 503
    metrics.remove_readiness_check("db")
    assert fetch(f"{url}/ready").status == 200


def test_ready_names_every_failing_check(metrics: mf.Metrics, url: str) -> None:
    def raises() -> bool:
        raise ValueError("bad")

    metrics.add_readiness_check("cache", lambda: False)
    metrics.add_readiness_check("queue", raises)
    metrics.add_readiness_check("db", lambda: False)
    metrics.add_readiness_check("disk", lambda: True)
    response = fetch(f"{url}/ready")
    assert response.status == 503
    assert set(response.json()["failing"]) == {"cache", "queue", "db"}


# -- other paths and methods ------------------------------------------------------------------


def test_unknown_paths_are_404_without_a_traceback(url: str) -> None:
    for path in ["/nope", "/metrics/extra", "/", "/healthz"]:
        response = fetch(f"{url}{path}")
        assert (path, response.status) == (path, 404)
        assert "Traceback" not in response.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "BREW"])
def test_other_methods_are_405_with_allow_on_every_route(url: str, method: str) -> None:
    for path in ["/metrics", "/health", "/ready", "/nope"]:
        response = fetch(f"{url}{path}", method=method, body=b"x=1")
        assert (path, response.status) == (path, 405)
        assert response.headers["Allow"] == "GET, HEAD"


# -- lifecycle --------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_busy_port_raises_endpoint_error_naming_port_and_setting(busy_port: int) -> None:
    with pytest.raises(mf.EndpointError) as caught:
        mf.Metrics({"port": busy_port}, environ={})
    message = str(caught.value)
    assert str(busy_port) in message
    assert "`port`" in message


def test_failed_configure_leaves_nothing_serving(metrics: mf.Metrics, busy_port: int) -> None:
    old_url = metrics.endpoint_url
    assert old_url is not None
    with pytest.raises(mf.EndpointError):
        metrics.configure({"port": busy_port}, environ={})
    assert metrics.endpoint_url is None
    assert_refused(old_url)
    metrics.configure({"port": 0}, environ={})
    assert fetch(f"{metrics.endpoint_url}/health").status == 200


def test_close_stops_serving(metrics: mf.Metrics, url: str) -> None:
    assert fetch(f"{url}/health").status == 200
    metrics.close()
    assert metrics.endpoint_url is None
    assert_refused(url)


def test_reconfigure_moves_the_endpoint(metrics: mf.Metrics, url: str) -> None:
    metrics.configure({"port": 0, "backends": ["prometheus"]}, environ={})
    new_url = metrics.endpoint_url
    assert new_url is not None
    assert new_url != url
    # Declared metrics are re-bound to the new backend (whose values start afresh).
    assert 't_requests_total{method="ping"}' in fetch(f"{new_url}/metrics").text
    assert_refused(url)


def test_no_endpoint_when_port_is_none() -> None:
    with mf.Metrics({"port": None, "backends": ["prometheus"]}, environ={}) as m:
        assert m.config is not None
        assert m.endpoint_url is None


# -- TLS --------------------------------------------------------------------------------------


def test_tls_serves_https(
    serve_facade: Callable[..., mf.Metrics], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    m = serve_facade(tls_cert=str(cert), tls_key=str(key))
    assert m.endpoint_url is not None
    assert m.endpoint_url.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    response = fetch(f"{m.endpoint_url}/metrics", context=context)
    assert response.status == 200
    assert "metricsfacade_dropped_total" in response.text


def test_tls_port_rejects_plain_http_and_keeps_serving(
    serve_facade: Callable[..., mf.Metrics], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    m = serve_facade(tls_cert=str(cert), tls_key=str(key))
    assert m.endpoint_url is not None
    plain_url = m.endpoint_url.replace("https://", "http://")
    try:
        status: int | None = fetch(f"{plain_url}/metrics").status
    except (http.client.HTTPException, OSError):
        status = None
    assert status != 200
    context = ssl.create_default_context(cafile=str(cert))
    assert fetch(f"{m.endpoint_url}/health", context=context).status == 200


def test_missing_tls_cert_file_is_an_endpoint_error(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    missing = tmp_path / "missing-cert.pem"
    config = {"port": 0, "tls_cert": str(missing), "tls_key": str(certificate[1])}
    with pytest.raises(mf.EndpointError, match=r"missing-cert\.pem"):
        mf.Metrics(config, environ={})


def test_tls_cert_without_key_is_a_config_error(certificate: tuple[Path, Path]) -> None:
    with pytest.raises(mf.ConfigError, match="tls_key"):
        mf.Metrics({"port": 0, "tls_cert": str(certificate[0])}, environ={})


# -- basic auth -------------------------------------------------------------------------------


@pytest.fixture
def auth_url(serve_facade: Callable[..., mf.Metrics]) -> str:
    m = serve_facade(auth_username="scraper", auth_password="s3cret")
    assert m.endpoint_url is not None
    return m.endpoint_url


def test_metrics_without_credentials_is_401_with_challenge(auth_url: str) -> None:
    response = fetch(f"{auth_url}/metrics")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_metrics_with_wrong_password_is_401(auth_url: str) -> None:
    assert fetch(f"{auth_url}/metrics", headers=basic("scraper", "wrong")).status == 401


def test_metrics_with_right_credentials_is_200(auth_url: str) -> None:
    response = fetch(f"{auth_url}/metrics", headers=basic("scraper", "s3cret"))
    assert response.status == 200
    assert "metricsfacade_dropped_total" in response.text


@pytest.mark.parametrize("header", ["Basic !!!", "Basic", "Bearer abc", "Basic c2NyYXBlcg=="])
def test_malformed_authorization_is_401(auth_url: str, header: str) -> None:
    assert fetch(f"{auth_url}/metrics", headers={"Authorization": header}).status == 401


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_need_no_credentials(auth_url: str, path: str) -> None:
    assert fetch(f"{auth_url}{path}").status == 200


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_scrapes_all_get_the_full_body(url: str) -> None:
    expected = fetch(f"{url}/metrics").body
    assert COUNTER_LINE.encode() in expected

    def scrape_20_times() -> list[tuple[int, bytes]]:
        results = []
        for _ in range(20):
            response = fetch(f"{url}/metrics")
            results.append((response.status, response.body))
        return results

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(scrape_20_times) for _ in range(20)]
        results = [result for future in futures for result in future.result(timeout=30)]
    assert len(results) == 400
    assert all(result == (200, expected) for result in results)


def test_endpoint_does_not_block_the_event_loop() -> None:
    async def main() -> tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            for _ in range(10):
                await asyncio.sleep(0.01)
                ticks += 1

        with mf.Metrics({"port": 0, "backends": ["prometheus"]}, environ={}) as m:
            loop = asyncio.get_running_loop()
            scrape = loop.run_in_executor(None, fetch, f"{m.endpoint_url}/metrics")
            response, _ = await asyncio.wait_for(asyncio.gather(scrape, tick()), timeout=5)
        return response.status, ticks

    assert asyncio.run(main()) == (200, 10)
