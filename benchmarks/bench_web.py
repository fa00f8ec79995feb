"""Per-request cost of the request middleware next to starlette-exporter's and
prometheus-fastapi-instrumentator's on the same FastAPI app, and the mounted metrics app
against the facade's own endpoint at 10,000 series. One run, side by side.

    python benchmarks/bench_web.py [--rounds N] [--requests N]

The route is an ``async def`` (a plain ``def`` adds a thread-pool hop per request, whose
noise is larger than what is measured). In process: each app is called directly through
ASGI (the smallest client there is), rounds interleaved; a middleware's cost is its app's
time per request minus the bare app's. Real server: each app on its own uvicorn process, a
fixed number of keep-alive requests from one client, rounds interleaved; the cost is the
server process's CPU time per request (user + system, all its threads) minus the bare
server's, which a latency difference measures too noisily. Ratios are medians of per-round
ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

APP_SOURCE = """
import os
from fastapi import FastAPI

VARIANT = os.environ.get("BENCH_VARIANT", "bare")


def build(variant):
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"id": item_id}

    if variant == "metricsfacade":
        import metricsfacade as mf
        from metricsfacade.web import ASGIMetricsMiddleware
        m = mf.Metrics({"port": "off", "backends": ["prometheus"]}, environ={})
        app.add_middleware(ASGIMetricsMiddleware, metrics=m)
    elif variant == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware
        app.add_middleware(PrometheusMiddleware)
    elif variant == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator
        Instrumentator().instrument(app)
    return app


app = build(VARIANT)
"""

VARIANTS = ["bare", "metricsfacade", "starlette-exporter", "instrumentator"]

#: Runs the app on uvicorn with the listening socket passed as file descriptor argv[1].
#: Not ``uvicorn --fd``: that wraps the descriptor as an AF_UNIX socket, so asyncio does not
#: set TCP_NODELAY on the connections it accepts, and every keep-alive response then waits
#: about 40 ms for the client's delayed ACK (Nagle): 2000 requests took 80 s instead of 1 s.
#: ``socket.socket(fileno=...)`` reads the real family (AF_INET) from the descriptor.
SERVE_FD = """
import socket, sys, uvicorn
sock = socket.socket(fileno=int(sys.argv[1]))
config = uvicorn.Config("bench_web_app:app", log_level="warning", access_log=False)
uvicorn.Server(config).run(sockets=[sock])
"""


def load_builder(directory: Path) -> Any:
    sys.path.insert(0, str(directory))
    import bench_web_app  # type: ignore[import-not-found]  # noqa: PLC0415

    return bench_web_app.build


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def drive(app: Any, count: int) -> float:
    """Seconds per request for ``count`` requests through ``app``."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    started = time.perf_counter()
    for n in range(count):
        await app(scope(f"/items/{n % 100}"), receive, send)
    return (time.perf_counter() - started) / count


def in_process(build: Any, rounds: int, count: int) -> dict[str, list[float]]:
    apps = {variant: build(variant) for variant in VARIANTS}
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}

    async def run() -> None:
        for app in apps.values():
            await drive(app, 200)  # warm up
        for _ in range(rounds):
            for variant, app in apps.items():
                times[variant].append(await drive(app, count))

    asyncio.run(run())
    return times


def listening_socket() -> socket.socket:
    """A socket already bound to a free loopback port and listening: handed to a server, so
    no other process can take the port between picking it and binding it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def keep_alive_requests(port: int, count: int, path: str = "/items/{n}") -> float:
    """Seconds per request for ``count`` GETs on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    for n in range(count):
        connection.request("GET", path.format(n=n % 100))
        connection.getresponse().read()
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed / count


def server_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def real_server(directory: Path, rounds: int, count: int) -> dict[str, list[float]]:
    """Server CPU seconds per request, per variant and round."""
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    sockets = [listening_socket() for _ in VARIANTS]
    try:
        for variant, sock in zip(VARIANTS, sockets, strict=True):
            fd = sock.fileno()
            command = [sys.executable, "-c", SERVE_FD, str(fd)]
            env = {**os.environ, "BENCH_VARIANT": variant}
            process = subprocess.Popen(command, cwd=directory, env=env, pass_fds=(fd,))
            servers[variant] = (process, int(sock.getsockname()[1]))
        for variant, (process, port) in servers.items():
            wait_for(f"http://127.0.0.1:{port}/items/1")
            keep_alive_requests(port, 200)
            if process.poll() is not None:
                raise RuntimeError(f"the {variant} server exited with {process.returncode}")
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for variant, (process, port) in servers.items():
                before = server_cpu(process.pid)
                keep_alive_requests(port, count)
                times[variant].append((server_cpu(process.pid) - before) / count)
        return times
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
        for sock in sockets:
            sock.close()


def exposition_apps(rounds: int, scrapes: int) -> dict[str, list[float]]:
    """Seconds per scrape of 10,000 series: the endpoint, the ASGI app on uvicorn, the WSGI
    app on waitress, all in this process."""
    import uvicorn  # noqa: PLC0415
    from waitress.server import create_server  # noqa: PLC0415

    import metricsfacade as mf  # noqa: PLC0415

    m = mf.Metrics({"port": 0, "backends": ["prometheus"]}, environ={})
    counter = m.counter("bench_series_total", "Series", labels=["n"])
    for n in range(10_000 - 1):
        counter.labels(str(n)).inc()
    asgi_socket = listening_socket()
    asgi_port = int(asgi_socket.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(m.asgi_app(), log_level="warning", access_log=False))
    threading.Thread(target=server.run, args=([asgi_socket],), daemon=True).start()
    wsgi = create_server(m.wsgi_app(), host="127.0.0.1", port=0)
    threading.Thread(target=wsgi.run, daemon=True).start()
    assert m.endpoint_url is not None
    ports = {
        "facade endpoint": int(m.endpoint_url.rsplit(":", 1)[1]),
        "ASGI app (uvicorn)": asgi_port,
        "WSGI app (waitress)": int(wsgi.effective_port),
    }
    for port in ports.values():
        wait_for(f"http://127.0.0.1:{port}/health")
    times: dict[str, list[float]] = {name: [] for name in ports}
    for _ in range(rounds):
        for name, port in ports.items():
            times[name].append(keep_alive_requests(port, scrapes, "/metrics"))
    server.should_exit = True
    m.close()  # waitress' daemon threads end with the process (closing it races its tasks)
    return times


def overhead_table(title: str, times: dict[str, list[float]], unit: str) -> None:
    bare = times["bare"]
    print(f"\n{title}")
    print(f"{'app':<22}{unit:>12}{'cost us':>10}{'ours / this':>13}")
    ours = [t - b for t, b in zip(times["metricsfacade"], bare, strict=True)]
    for variant in VARIANTS:
        per_request = statistics.median(times[variant]) * 1e6
        costs = [t - b for t, b in zip(times[variant], bare, strict=True)]
        cost = statistics.median(costs) * 1e6 if variant != "bare" else 0.0
        shown = ""
        if variant not in ("bare", "metricsfacade"):
            ratios = [o / c for o, c in zip(ours, costs, strict=True) if c > 0]
            shown = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
        print(f"{variant:<22}{per_request:>12.1f}{cost:>10.1f}{shown:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir)
        (directory / "bench_web_app.py").write_text(textwrap.dedent(APP_SOURCE))
        build = load_builder(directory)
        overhead_table(
            f"In process (ASGI calls), {args.requests} requests x {args.rounds} rounds",
            in_process(build, args.rounds, args.requests),
            "us/request",
        )
        overhead_table(
            f"Real uvicorn, server CPU, {args.requests} keep-alive requests x {args.rounds} rounds",
            real_server(directory, args.rounds, args.requests),
            "CPU us/req",
        )
    scrapes = exposition_apps(args.rounds, 10)
    print("\nExposition of 10,000 series, 10 scrapes x rounds")
    endpoint = scrapes["facade endpoint"]
    for name, times in scrapes.items():
        ratio = statistics.median(t / e for t, e in zip(times, endpoint, strict=True))
        print(f"{name:<22}{statistics.median(times) * 1e3:>10.1f} ms{ratio:>8.2f}x endpoint")


if __name__ == "__main__":
    main()
