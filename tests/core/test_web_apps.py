"""The mountable apps answer as the facade's own endpoint does: same status, headers that
matter and bytes, auth, probes with async checks; promtool accepts what they serve.

The ASGI app runs mounted in a Starlette app on a real uvicorn, the WSGI app under a real
waitress, both in this process on threads, next to the facade's endpoint on its own port.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator

import pytest
from support import eventually, require_module, sinks

import metricsfacade as mf
from metricsfacade.web import ASGIMetricsMiddleware

uvicorn = require_module("uvicorn")
waitress_server = require_module("waitress.server")
httpx = require_module("httpx")
require_module("starlette")
from prometheus_client.openmetrics.parser import text_string_to_metric_families  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
REQUESTS = [
    {},
    {"Accept-Encoding": "gzip"},
    {"Accept": OPENMETRICS},
    {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"},
]


@pytest.fixture(scope="module")
def metrics() -> Iterator[mf.Metrics]:
    facade = mf.Metrics(
        {"port": 0, "backends": ["prometheus"], "readiness_timeout_secs": 0.5}, environ={}
    )
    requests = facade.counter("t_requests_total", "Requests", labels=["method"])
    for n in range(50):
        requests.labels(f"m{n}").inc(n)
    facade.histogram("t_size_bytes", "Sizes", buckets=[1, 10]).observe(3)
    yield facade
    facade.close()


@pytest.fixture(scope="module")
def asgi_url(metrics: mf.Metrics) -> Iterator[str]:
    """The ASGI app mounted at /ops of a Starlette app on uvicorn."""
    app = Starlette(routes=[Mount("/ops", metrics.asgi_app())])
    port = sinks.free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/ops"
    wait_for(f"{url}/health")
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def wsgi_url(metrics: mf.Metrics) -> Iterator[str]:
    """The WSGI app at the root of a waitress server."""
    server = waitress_server.create_server(metrics.wsgi_app(), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    wait_for(f"{url}/health")
    yield url
    server.close()
    thread.join(10)


def wait_for(url: str) -> None:
    """Until ``url`` answers 200 (the server thread has started listening)."""

    def answers() -> bool:
        try:
            return sinks.http_get(url, timeout=1)[0] == 200
        except OSError:
            return False

    eventually(answers, 10, 0.05, message=f"{url} did not answer")


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


def answer(url: str, headers: dict[str, str]) -> tuple[int, str | None, str | None, bytes]:
    status, got, body = sinks.http_get(url, headers=headers)
    named = {name.lower(): value for name, value in got.items()}
    return status, named.get("content-type"), named.get("content-encoding"), body


@pytest.mark.parametrize("headers", REQUESTS)
@pytest.mark.parametrize("path", ["/metrics", "/health", "/ready", "/nope"])
def test_the_apps_answer_byte_for_byte_as_the_endpoint(
    metrics: mf.Metrics, asgi_url: str, wsgi_url: str, path: str, headers: dict[str, str]
) -> None:
    assert metrics.endpoint_url is not None
    expected = answer(metrics.endpoint_url + path, headers)
    assert answer(asgi_url + path, headers) == expected
    assert answer(wsgi_url + path, headers) == expected


def test_mounted_apps_serve_the_exposition_at_their_root(
    metrics: mf.Metrics, asgi_url: str, wsgi_url: str
) -> None:
    assert metrics.endpoint_url is not None
    expected = sinks.http_get(metrics.endpoint_url + "/metrics")[2]
    assert sinks.http_get(asgi_url + "/")[2] == expected
    assert sinks.http_get(wsgi_url + "/")[2] == expected


def test_other_methods_are_405_with_allow(asgi_url: str, wsgi_url: str) -> None:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    for url in (asgi_url, wsgi_url):
        request = urllib.request.Request(f"{url}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405
        assert refused.value.headers["Allow"] == "GET, HEAD"


def test_promtool_accepts_what_the_apps_serve(
    metrics: mf.Metrics, asgi_url: str, wsgi_url: str, promtool_bin: str
) -> None:
    """promtool lints the text format (the middleware's metrics included); the OpenMetrics
    answer must parse with prometheus-client's strict parser."""
    app = Starlette(routes=[Mount("/ops", metrics.asgi_app())])
    instrumented = ASGIMetricsMiddleware(app, metrics=metrics, exclude_paths=[])
    transport = httpx.ASGITransport(app=instrumented)

    async def request() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/ops/health")

    asyncio.run(request())
    for url in (asgi_url, wsgi_url):
        body = sinks.http_get(f"{url}/metrics")[2]
        assert b"http_requests_total{" in body
        result = sinks.promtool_check_metrics(promtool_bin, body)
        assert result.returncode == 0, sinks.describe_run(result, body)
        openmetrics = sinks.http_get(f"{url}/metrics", headers={"Accept": OPENMETRICS})[2]
        families = list(text_string_to_metric_families(openmetrics.decode()))
        assert "http_request_duration_seconds" in {family.name for family in families}


def test_async_readiness_checks_run_on_the_serving_loop(
    metrics: mf.Metrics, asgi_url: str, wsgi_url: str
) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def pool_is_up() -> bool:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0.01)
        return False

    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    metrics.add_readiness_check("pool", pool_is_up)
    metrics.add_readiness_check("slow", hangs)
    metrics.add_readiness_check("sync", lambda: True)
    try:
        for url in (asgi_url, wsgi_url):
            started = time.monotonic()
            status, _, body = sinks.http_get(f"{url}/ready")
            assert time.monotonic() - started < 3
            assert status == 503
            assert body == (
                b'{"status": "not ready", "failing": {"pool": "returned False", '
                b'"slow": "timed out after 0.5s"}}\n'
            )
    finally:
        for name in ("pool", "slow", "sync"):
            metrics.remove_readiness_check(name)
    # The ASGI app awaited it on uvicorn's loop (one loop for its run); WSGI in a thread's own.
    assert len(loops) == 2
    assert loops[0] is not loops[1]


def test_basic_auth_is_honoured_on_the_exposition_only() -> None:
    facade = mf.Metrics(
        {"port": 0, "backends": ["prometheus"], "auth_username": "u", "auth_password": "p"},
        environ={},
    )
    server = waitress_server.create_server(facade.wsgi_app(), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert facade.endpoint_url is not None
        url = f"http://127.0.0.1:{server.effective_port}"
        wait_for(f"{url}/health")
        for headers in ({}, basic("u", "wrong"), basic("u", "p")):
            expected = answer(facade.endpoint_url + "/metrics", headers)
            assert answer(url + "/metrics", headers) == expected
        assert answer(url + "/metrics", {})[0] == 401
        assert answer(url + "/metrics", basic("u", "p"))[0] == 200
        assert answer(url + "/health", {})[0] == 200
    finally:
        server.close()
        thread.join(10)
        facade.close()


def test_the_asgi_app_follows_auth_in_process() -> None:
    facade = mf.Metrics(
        {"port": "off", "backends": ["prometheus"], "auth_username": "u", "auth_password": "p"},
        environ={},
    )

    async def fetch(headers: dict[str, str]) -> int:
        transport = httpx.ASGITransport(app=facade.asgi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return int((await client.get("/metrics", headers=headers)).status_code)

    try:
        assert asyncio.run(fetch({})) == 401
        assert asyncio.run(fetch(basic("u", "p"))) == 200
    finally:
        facade.close()
