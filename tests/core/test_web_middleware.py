"""The request middleware driven in process through the ASGI and WSGI callables: path floods,
exceptions, websockets and lifespan, status grouping, request labels, exclusions."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from support import require_module

import metricsfacade as mf
from metricsfacade.web import ASGIMetricsMiddleware, RequestLabel, WSGIMetricsMiddleware

starlette_routing = require_module("starlette.routing")
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

flask = require_module("flask")

FLOOD = 100_000


@pytest.fixture
def metrics() -> Iterator[mf.Metrics]:
    facade = mf.Metrics({"port": "off", "backends": ["memory"]}, environ={})
    yield facade
    facade.close()


@pytest.fixture
def prometheus() -> Iterator[mf.Metrics]:
    """A facade with the Prometheus backend only (the memory one keeps every observation)."""
    facade = mf.Metrics({"port": "off", "backends": ["prometheus"]}, environ={})
    yield facade
    facade.close()


def exposed_series(metrics: mf.Metrics, name: str) -> set[str]:
    """The label sets of ``name`` in the exposition."""
    text = metrics.backend("prometheus").render(None)[0].decode()  # type: ignore[attr-defined]
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith(name + "{")}


def value(metrics: mf.Metrics, name: str, **labels: str) -> float:
    return float(metrics.backend("memory").value(name, labels))  # type: ignore[attr-defined]


def observations(metrics: mf.Metrics, name: str, **labels: str) -> list[float]:
    memory = metrics.backend("memory")
    for record in memory.records(name):  # type: ignore[attr-defined]
        if record.labels == labels:
            return list(record.histogram.values)
    return []


# -- driving the callables ------------------------------------------------------------------


def http_scope(
    path: str, method: str = "GET", headers: Iterable[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def call_asgi(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def call_wsgi(app: Any, path: str, method: str = "GET") -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return statuses[0], data


def starlette_app() -> Starlette:
    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[starlette_routing.Route("/items/{item_id}", item)])


def flask_app() -> Any:
    app = flask.Flask("flood")

    @app.get("/items/<item_id>")
    def item(item_id: str) -> str:
        return "ok"

    return app


# -- the path floods ------------------------------------------------------------------------


def test_an_asgi_path_flood_makes_one_series_per_route(prometheus: mf.Metrics) -> None:
    app = ASGIMetricsMiddleware(starlette_app(), metrics=prometheus)

    async def flood() -> None:
        for n in range(FLOOD):
            await call_asgi(app, http_scope(f"/items/{n}"))
            await call_asgi(app, http_scope(f"/unknown/{n}"))

    asyncio.run(flood())
    assert exposed_series(prometheus, "http_requests_total") == {
        'http_requests_total{method="GET",route="/items/{item_id}",status="200"}',
        'http_requests_total{method="GET",route="unmatched",status="404"}',
    }
    assert len(exposed_series(prometheus, "http_request_duration_seconds_count")) == 2
    assert len(exposed_series(prometheus, "http_response_size_bytes_count")) == 2


def test_a_wsgi_path_flood_makes_one_series_per_route(prometheus: mf.Metrics) -> None:
    app = WSGIMetricsMiddleware(flask_app().wsgi_app, metrics=prometheus)
    for n in range(FLOOD):
        assert call_wsgi(app, f"/items/{n}")[0].startswith("200")
        assert call_wsgi(app, f"/unknown/{n}")[0].startswith("404")
    assert exposed_series(prometheus, "http_requests_total") == {
        'http_requests_total{method="GET",route="/items/{item_id}",status="200"}',
        'http_requests_total{method="GET",route="unmatched",status="404"}',
    }
    assert len(exposed_series(prometheus, "http_request_size_bytes_count")) == 2


def test_made_up_methods_fold_into_other(metrics: mf.Metrics) -> None:
    app = ASGIMetricsMiddleware(starlette_app(), metrics=metrics)
    for n in range(50):
        asyncio.run(call_asgi(app, http_scope("/items/1", method=f"M{n}")))
    assert (
        value(
            metrics, "http_requests_total", method="other", route="/items/{item_id}", status="405"
        )
        == 50
    )


# -- exceptions -----------------------------------------------------------------------------


class Failure(Exception):
    pass


def test_an_asgi_exception_is_a_500_and_reraised_unchanged(metrics: mf.Metrics) -> None:
    failure = Failure("no")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise failure

    wrapped = ASGIMetricsMiddleware(app, metrics=metrics)
    with pytest.raises(Failure) as raised:
        asyncio.run(call_asgi(wrapped, http_scope("/x")))
    assert raised.value is failure
    assert value(metrics, "http_requests_total", method="GET", route="unmatched", status="500") == 1
    assert value(metrics, "http_requests_in_progress", method="GET") == 0


def test_a_wsgi_exception_in_the_body_is_a_500_and_reraised_unchanged(
    metrics: mf.Metrics,
) -> None:
    failure = Failure("mid-body")

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"part"
        raise failure

    wrapped = WSGIMetricsMiddleware(app, metrics=metrics)
    with pytest.raises(Failure) as raised:
        call_wsgi(wrapped, "/x")
    assert raised.value is failure
    assert value(metrics, "http_requests_total", method="GET", route="unmatched", status="500") == 1
    assert value(metrics, "http_requests_in_progress", method="GET") == 0


def test_a_failing_route_lookup_never_breaks_the_request(
    metrics: mf.Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metricsfacade.web.asgi as asgi_module  # noqa: PLC0415

    def broken(*args: object) -> str:
        raise RuntimeError("lookup failed")

    monkeypatch.setattr(asgi_module, "asgi_route", broken)
    app = ASGIMetricsMiddleware(starlette_app(), metrics=metrics)
    sent = asyncio.run(call_asgi(app, http_scope("/items/1")))
    assert sent[0]["status"] == 200
    assert value(metrics, "http_requests_in_progress", method="GET") == 0


# -- what is not a request ------------------------------------------------------------------


def test_websockets_and_lifespan_pass_through_uncounted(metrics: mf.Metrics) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = ASGIMetricsMiddleware(app, metrics=metrics)
    for kind in ("websocket", "lifespan"):
        asyncio.run(wrapped({"type": kind, "path": "/ws"}, None, None))
    assert seen == ["websocket", "lifespan"]
    assert metrics.backend("memory").records("http_requests_total") == []  # type: ignore[attr-defined]


def test_excluded_paths_are_passed_through_uncounted(metrics: mf.Metrics) -> None:
    app = ASGIMetricsMiddleware(
        starlette_app(), metrics=metrics, exclude_paths=["/items/1", "/internal"]
    )
    for path in ("/items/1", "/items/1/", "/internal", "/internal/deep", "/items/2"):
        asyncio.run(call_asgi(app, http_scope(path)))
    records = metrics.backend("memory").records("http_requests_total")  # type: ignore[attr-defined]
    assert sum(record.value for record in records) == 1  # /items/2 only


# -- options --------------------------------------------------------------------------------


def test_prefix_grouped_status_and_buckets(metrics: mf.Metrics) -> None:
    app = ASGIMetricsMiddleware(
        starlette_app(),
        metrics=metrics,
        prefix="api",
        group_status=True,
        duration_buckets=[0.5, 1],
        size_buckets=[10, 100],
    )
    asyncio.run(call_asgi(app, http_scope("/items/1")))
    asyncio.run(call_asgi(app, http_scope("/nope")))
    assert (
        value(metrics, "api_requests_total", method="GET", route="/items/{item_id}", status="2xx")
        == 1
    )
    assert value(metrics, "api_requests_total", method="GET", route="unmatched", status="4xx") == 1
    timer = metrics.find("api_request_duration_seconds")
    assert timer is not None
    assert timer.spec.buckets == (0.5, 1.0)


def test_request_labels_are_bounded(metrics: mf.Metrics) -> None:
    tenant = RequestLabel("tenant", lambda request: request.header("x-tenant"), limit=2)
    version = RequestLabel(
        "version", lambda request: request.header("x-version"), allowed={"v1", "v2"}
    )
    app = ASGIMetricsMiddleware(starlette_app(), metrics=metrics, request_labels=[tenant, version])
    for n in range(10):
        headers = [(b"x-tenant", f"t{n}".encode()), (b"x-version", f"v{n}".encode())]
        asyncio.run(call_asgi(app, http_scope("/items/1", headers=headers)))
    records = metrics.backend("memory").records("http_requests_total")  # type: ignore[attr-defined]
    counts = {(r.labels["tenant"], r.labels["version"]): r.value for r in records}
    assert counts == {
        ("t0", "other"): 1,
        ("t1", "v1"): 1,
        ("other", "v2"): 1,
        ("other", "other"): 7,
    }


def test_a_raising_label_hook_gives_other(metrics: mf.Metrics) -> None:
    def broken(request: Any) -> str:
        raise ValueError("no")

    app = WSGIMetricsMiddleware(
        flask_app().wsgi_app, metrics=metrics, request_labels=[RequestLabel("x", broken)]
    )
    assert call_wsgi(app, "/items/1")[0].startswith("200")
    assert (
        value(
            metrics,
            "http_requests_total",
            method="GET",
            route="/items/{item_id}",
            status="200",
            x="other",
        )
        == 1
    )


def test_an_app_setting_the_route_key_names_its_route(metrics: mf.Metrics) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["metricsfacade.route"] = "/things/<int:thing_id>"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = ASGIMetricsMiddleware(app, metrics=metrics)
    asyncio.run(call_asgi(wrapped, http_scope("/things/9")))
    assert (
        value(
            metrics, "http_requests_total", method="GET", route="/things/{thing_id}", status="204"
        )
        == 1
    )


def test_a_request_is_recorded_before_its_last_byte_reaches_the_client(
    metrics: mf.Metrics,
) -> None:
    """So a client that scrapes right after a response always finds it counted."""
    counted_at_send: list[float] = []
    wrapped = ASGIMetricsMiddleware(starlette_app(), metrics=metrics)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            counted_at_send.append(
                value(
                    metrics,
                    "http_requests_total",
                    method="GET",
                    route="/items/{item_id}",
                    status="200",
                )
            )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(wrapped(http_scope("/items/1"), receive, send))
    assert counted_at_send == [1]
    assert observations(
        metrics, "http_response_size_bytes", method="GET", route="/items/{item_id}"
    ) == [2]


def test_routes_under_mounts_keep_every_template(metrics: mf.Metrics) -> None:
    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[starlette_routing.Route("/x/{y:int}", item)])
    outer = Starlette(
        routes=[
            starlette_routing.Mount("/t/{tenant}", inner),
            starlette_routing.Mount("/ops", metrics.asgi_app()),
        ]
    )
    app = ASGIMetricsMiddleware(outer, metrics=metrics, exclude_paths=[])
    for path in ("/t/a/x/1", "/t/b/x/2", "/ops/health"):
        asyncio.run(call_asgi(app, http_scope(path)))
    records = metrics.backend("memory").records("http_requests_total")  # type: ignore[attr-defined]
    assert {r.labels["route"]: r.value for r in records} == {"/t/{tenant}/x/{y}": 2, "/ops": 1}


FRAMEWORK_FLOODS = {
    # Each in a process of its own: Django's settings are global to a process.
    "fastapi": """
import asyncio
from fastapi import FastAPI
from test_web_middleware import call_asgi, http_scope
from metricsfacade.web import ASGIMetricsMiddleware

inner = FastAPI()

@inner.get("/items/{item_id}")
async def item(item_id: int):
    return {"id": item_id}

app = ASGIMetricsMiddleware(inner, metrics=m)

async def flood():
    for n in range(FLOOD):
        await call_asgi(app, http_scope(f"/items/{n}"))
        await call_asgi(app, http_scope(f"/unknown/{n}"))

asyncio.run(flood())
""",
    "django": """
import django
from django.conf import settings

settings.configure(
    DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="t", MIDDLEWARE=[]
)
django.setup()
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path
from test_web_middleware import call_wsgi
from metricsfacade.web import WSGIMetricsMiddleware

def item(request, item_id):
    return HttpResponse("ok")

urlpatterns = [path("items/<int:item_id>", item)]
app = WSGIMetricsMiddleware(get_wsgi_application(), metrics=m)
for n in range(FLOOD):
    call_wsgi(app, f"/items/{n}")
    call_wsgi(app, f"/unknown/{n}")
""",
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_FLOODS))
def test_a_path_flood_in_fastapi_and_django_makes_one_series_per_route(framework: str) -> None:
    require_module(framework)
    # The package under test, the support package and this file (which the script imports).
    paths = [str(support.REPO), str(support.REPO / "tests"), str(Path(__file__).parent)]
    script = (
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        "import metricsfacade as mf\n"
        "m = mf.Metrics({'port': 'off', 'backends': ['prometheus']}, environ={})\n"
        f"FLOOD = {FLOOD}\n" + FRAMEWORK_FLOODS[framework] + "\n"
        "print(m.backend('prometheus').render(None)[0].decode())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert {line.split(" ")[0] for line in lines if line.startswith("http_requests_total{")} == {
        'http_requests_total{method="GET",route="/items/{item_id}",status="200"}',
        'http_requests_total{method="GET",route="unmatched",status="404"}',
    }
    counts = [line for line in lines if line.startswith("http_request_duration_seconds_count")]
    assert len(counts) == 2
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counts) == 2 * FLOOD
