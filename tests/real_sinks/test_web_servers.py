"""Request middleware in real services: FastAPI and Starlette on uvicorn, Flask on waitress,
Django on gunicorn, each a server process on 127.0.0.1 driven by real HTTP requests, with its
metrics read back from the mounted metrics app of the same process.

Every app has the same routes: ``/items/{item_id}`` (GET and POST), ``/boom`` (raises),
``/stream`` (three 1,000-byte chunks, 0.1 s apart), and the metrics app under ``/metrics``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Samples, eventually, require_module, samples, scrape, sinks

require_module("fastapi")
require_module("uvicorn")
require_module("flask")
require_module("django")
require_module("waitress")
require_module("gunicorn")
require_module("prometheus_client")

FACADE = """
import metricsfacade as mf
m = mf.Metrics({"port": "off", "backends": ["prometheus"]}, environ={})
"""

FASTAPI_APP = (
    FACADE
    + """
import asyncio
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from metricsfacade.web import ASGIMetricsMiddleware

app = FastAPI()
app.add_middleware(ASGIMetricsMiddleware, metrics=m)
app.mount("/metrics", m.asgi_app())

@app.get("/items/{item_id}")
def item(item_id: int):
    return {"id": item_id}

@app.post("/items/{item_id}")
async def post_item(item_id: int, request: Request):
    return {"id": item_id, "got": len(await request.body())}

@app.get("/boom")
def boom():
    raise RuntimeError("boom")

@app.get("/stream")
def stream():
    async def chunks():
        for _ in range(3):
            await asyncio.sleep(0.1)
            yield b"x" * 1000
    return StreamingResponse(chunks())
"""
)

STARLETTE_APP = (
    FACADE
    + """
import asyncio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from metricsfacade.web import ASGIMetricsMiddleware

async def item(request):
    return JSONResponse({"id": request.path_params["item_id"]})

async def post_item(request):
    body = await request.body()
    return JSONResponse({"id": request.path_params["item_id"], "got": len(body)})

async def boom(request):
    raise RuntimeError("boom")

async def stream(request):
    async def chunks():
        for _ in range(3):
            await asyncio.sleep(0.1)
            yield b"x" * 1000
    return StreamingResponse(chunks())

app = Starlette(
    routes=[
        Route("/items/{item_id:int}", item, methods=["GET"]),
        Route("/items/{item_id:int}", post_item, methods=["POST"]),
        Route("/boom", boom),
        Route("/stream", stream),
        Mount("/metrics", m.asgi_app()),
    ],
    middleware=[Middleware(ASGIMetricsMiddleware, metrics=m)],
)
"""
)

FLASK_APP = (
    FACADE
    + """
import time
from flask import Flask, Response, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from metricsfacade.web import WSGIMetricsMiddleware

app = Flask(__name__)

@app.get("/items/<int:item_id>")
def item(item_id):
    return {"id": item_id}

@app.post("/items/<int:item_id>")
def post_item(item_id):
    return {"id": item_id, "got": len(request.get_data())}

@app.get("/boom")
def boom():
    raise RuntimeError("boom")

@app.get("/stream")
def stream():
    def chunks():
        for _ in range(3):
            time.sleep(0.1)
            yield b"x" * 1000
    return Response(chunks())

app.wsgi_app = DispatcherMiddleware(
    WSGIMetricsMiddleware(app.wsgi_app, metrics=m), {"/metrics": m.wsgi_app()}
)
"""
)

DJANGO_APP = (
    FACADE
    + """
import time
import django
from django.conf import settings

settings.configure(
    DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test", MIDDLEWARE=[]
)
django.setup()

from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse, StreamingHttpResponse
from django.urls import path
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from metricsfacade.web import WSGIMetricsMiddleware

def item(request, item_id):
    return JsonResponse({"id": item_id, "got": len(request.body)})

def boom(request):
    raise RuntimeError("boom")

def stream(request):
    def chunks():
        for _ in range(3):
            time.sleep(0.1)
            yield b"x" * 1000
    return StreamingHttpResponse(chunks())

urlpatterns = [path("items/<int:item_id>", item), path("boom", boom), path("stream", stream)]
app = DispatcherMiddleware(
    WSGIMetricsMiddleware(get_wsgi_application(), metrics=m), {"/metrics": m.wsgi_app()}
)
"""
)


def uvicorn(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)]


def waitress(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}", f"{module}:app"]


def gunicorn(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", f"{module}:app"]


SERVICES: dict[str, tuple[str, Callable[[str, int], list[str]]]] = {
    "fastapi": (FASTAPI_APP, uvicorn),
    "starlette": (STARLETTE_APP, uvicorn),
    "flask": (FLASK_APP, waitress),
    "django": (DJANGO_APP, gunicorn),
}


@pytest.fixture(params=sorted(SERVICES), scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of a real server running the framework's app."""
    source, command = SERVICES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    module = f"app_{request.param}"
    (directory / f"{module}.py").write_text(textwrap.dedent(source))
    port = sinks.free_port()
    log = directory / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command(module, port), cwd=directory, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the server exited:\n{log.read_text()}")
        try:
            return sinks.http_get(f"{url}/metrics/health", timeout=1)[0] == 200
        except OSError:
            return False

    eventually(serving, 20, 0.1, message=lambda: f"the server did not start:\n{log.read_text()}")


def scraped_samples(url: str) -> Samples:
    """Every sample the app's mounted /metrics/ exposes."""
    return samples(scrape(f"{url}/metrics/"))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def settled(url: str, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds: a WSGI request is recorded once the server has taken its
    last chunk, which may be a moment after the client has it."""
    last: list[Samples] = []

    def holds() -> bool:
        last.append(scraped_samples(url))
        return check(last[-1])

    eventually(holds, 5, 0.05, fail=False)
    return last[-1]


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def test_requests_are_counted_by_route_template_status_and_size(service: str) -> None:
    before = scraped_samples(service)
    bodies = [sinks.http_get(f"{service}/items/{n}")[2] for n in (1, 22, 333)]
    status, posted = post(f"{service}/items/7", b"y" * 500)
    assert status == 200
    assert sinks.http_get(f"{service}/no/such/path")[0] == 404
    route = {"route": "/items/{item_id}"}
    get = {"method": "GET", **route, "status": "200"}

    def grew(name: str, labels: dict[str, str], samples: Samples) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    after = settled(
        service,
        lambda s: (
            grew("http_requests_total", get, s) == 3
            and grew(
                "http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}, s
            )
            == 1
        ),
    )
    assert grew("http_requests_total", get, after) == 3
    assert grew("http_request_duration_seconds_count", get, after) == 3
    post_labels = {"method": "POST", **route}
    assert grew("http_requests_total", {**post_labels, "status": "200"}, after) == 1
    assert grew("http_request_size_bytes_sum", post_labels, after) == 500
    assert grew("http_request_size_bytes_count", post_labels, after) == 1
    sizes = {"method": "GET", **route}
    assert grew("http_response_size_bytes_sum", sizes, after) == sum(map(len, bodies))
    assert grew("http_response_size_bytes_sum", post_labels, after) == len(posted)
    assert (
        grew("http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}, after)
        == 1
    )
    assert value(after, "http_requests_in_progress", method="GET") == 0
    # No raw path ever becomes a label value.
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any(path in routes for path in ("/items/1", "/items/7", "/no/such/path"))


def test_an_exception_is_counted_as_500(service: str) -> None:
    before = scraped_samples(service)
    assert sinks.http_get(f"{service}/boom")[0] == 500
    labels = {"method": "GET", "route": "/boom", "status": "500"}
    after = settled(
        service,
        lambda s: (
            value(s, "http_requests_total", **labels)
            > value(before, "http_requests_total", **labels)
        ),
    )
    assert (
        value(after, "http_requests_total", **labels)
        - value(before, "http_requests_total", **labels)
        == 1
    )


def test_a_streamed_response_is_timed_to_its_last_byte(service: str) -> None:
    before = scraped_samples(service)
    status, _, body = sinks.http_get(f"{service}/stream")
    assert (status, len(body)) == (200, 3000)
    labels = {"method": "GET", "route": "/stream", "status": "200"}
    name = "http_request_duration_seconds_count"
    after = settled(service, lambda s: value(s, name, **labels) > value(before, name, **labels))
    seconds = value(after, "http_request_duration_seconds_sum", **labels) - value(
        before, "http_request_duration_seconds_sum", **labels
    )
    assert 0.3 <= seconds < 2
    sizes = {"method": "GET", "route": "/stream"}
    assert (
        value(after, "http_response_size_bytes_sum", **sizes)
        - value(before, "http_response_size_bytes_sum", **sizes)
        == 3000
    )


def test_the_metrics_and_probe_routes_are_not_counted(service: str) -> None:
    for path in ("/metrics/", "/metrics/health", "/metrics/ready", "/metrics"):
        sinks.http_get(f"{service}{path}")
    samples = scraped_samples(service)
    counted = {dict(labels)["route"] for name, labels in samples if name == "http_requests_total"}
    assert not any(route.startswith("/metrics") for route in counted)
