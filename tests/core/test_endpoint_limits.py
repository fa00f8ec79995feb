"""The endpoint's limits: idle and slow clients cannot exhaust its threads or descriptors.

Real sockets on 127.0.0.1. The main test runs a facade in a child process limited to 1,024
descriptors, holds 10,000 slowloris connections to it (one byte every two seconds) and checks
that a scrape is served within seconds, that the child's thread and descriptor counts stay
bounded, and that the application can still open files (a readiness check opens 64 and
reports). Before the limits, the same flood made one thread per connection, exhausted the
descriptors (the application's own ``open()`` failed) and a scrape timed out.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import require_module

import metricsfacade as mf
from metricsfacade import endpoint

psutil = require_module("psutil")

FLOOD = 10_000
CHILD_NOFILE = 1024
TRICKLE_SECS = 2.0
SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 64

CHILD = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
import metricsfacade as mf

directory = sys.argv[1]


def files_open():
    handles = []
    try:
        for n in range(64):
            handles.append(open(os.path.join(directory, f"f{{n}}"), "w"))
    finally:
        for handle in handles:
            handle.close()
    return True


m = mf.Metrics(
    {{"port": 0, "bind": "127.0.0.1", "backends": ["prometheus"], "readiness_timeout_secs": 5}},
    environ={{}},
)
m.counter("flood_requests_total", "Requests").inc(7)
m.add_readiness_check("files", files_open)
print(m.endpoint_url, flush=True)
sys.stdin.read()
m.close()
"""


def get(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def timed_get(url: str) -> tuple[int | str, float, bytes]:
    """(status or the error, seconds taken, body): a timeout is a result, not a crash."""
    started = time.monotonic()
    try:
        status, body = get(url)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}", time.monotonic() - started, b""
    return status, time.monotonic() - started, body


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE raised to its hard limit (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 2_000:
        pytest.skip(
            f"holding {FLOOD} connections needs RLIMIT_NOFILE >= {FLOOD + 2_000}; "
            f"the hard limit here is {hard}"
        )
    target = hard if hard != resource.RLIM_INFINITY else FLOOD + 10_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A facade serving in a child process with RLIMIT_NOFILE 1024: (its URL, the process)."""
    script = tmp_path / "serve.py"
    script.write_text(CHILD.format(nofile=CHILD_NOFILE))
    files = tmp_path / "files"
    files.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(script), str(files)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"the child did not start: {url!r}"
        yield url, psutil.Process(process.pid)
    finally:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def open_flood(port: int, count: int) -> list[socket.socket]:
    """``count`` non-blocking connections (the kernel completes them as the server accepts)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        result = sock.connect_ex(("127.0.0.1", port))
        assert result in (0, errno.EINPROGRESS), os_error(result)
        sockets.append(sock)
    return sockets


def os_error(code: int) -> str:
    return f"connect failed: {errno.errorcode.get(code, code)}"


def closed(sock: socket.socket) -> bool:
    """Whether the server closed this (non-blocking) connection."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def trickle(sockets: list[socket.socket], index: int) -> int:
    """Send byte ``index`` of a slow request head on every socket; how many sends went out."""
    byte = SLOW_HEAD[index % len(SLOW_HEAD) : index % len(SLOW_HEAD) + 1]
    sent = 0
    for sock in sockets:
        # Not connected yet, or closed by the server: the flood goes on.
        with contextlib.suppress(OSError):
            sent += sock.send(byte)
    return sent


def test_a_scrape_is_served_while_10000_slow_connections_are_held(
    many_descriptors: None, child: tuple[str, psutil.Process]
) -> None:
    url, process = child
    status, _, body = timed_get(f"{url}/metrics")
    assert status == 200
    assert b"flood_requests_total 7.0" in body
    assert timed_get(f"{url}/ready")[0] == 200
    threads_before = process.num_threads()

    sockets = open_flood(int(urlsplit(url).port or 0), FLOOD)
    problems: list[str] = []
    samples: list[tuple[int, int, float]] = []
    try:
        trickle(sockets, 0)
        for round_ in range(1, 5):
            deadline = time.monotonic() + TRICKLE_SECS
            status, took, body = timed_get(f"{url}/metrics")
            if status != 200 or b"flood_requests_total 7.0" not in body or took > 4:
                problems.append(f"round {round_}: scrape -> {status} in {took:.1f}s")
            status, took, body = timed_get(f"{url}/ready")
            if status != 200:
                problems.append(f"round {round_}: /ready (opens 64 files) -> {status} {body!r}")
            threads, fds = process.num_threads(), process.num_fds()
            samples.append((threads, fds, took))
            if threads > threads_before + 8:
                problems.append(f"round {round_}: {threads} threads (before: {threads_before})")
            if fds > endpoint.MAX_CONNECTIONS + endpoint.MAX_QUEUED + 100:
                problems.append(f"round {round_}: {fds} descriptors in the server process")
            time.sleep(max(0.0, deadline - time.monotonic()))
            trickle(sockets, round_)
        # Every connection reached the server: all but the newest were closed to admit them.
        closed_by_server = sum(closed(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    assert not problems, "\n".join(problems) + f"\n(threads, fds, secs) per round: {samples}"
    assert closed_by_server >= FLOOD - endpoint.MAX_CONNECTIONS - endpoint.MAX_QUEUED
    assert timed_get(f"{url}/metrics")[0] == 200


# -- the head deadline and size limit, in process -----------------------------------------------


@pytest.fixture
def url(serve_facade: Callable[..., mf.Metrics]) -> str:
    facade = serve_facade()
    facade.counter("limit_requests_total", "Requests").inc()
    assert facade.endpoint_url is not None
    return facade.endpoint_url


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def exchange(url: str, head: bytes) -> bytes:
    """Send ``head`` and read the answer until the server closes the connection."""
    with socket.create_connection(address(url), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_head_slower_than_the_deadline_is_cut(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setattr(endpoint, "HEAD_DEADLINE_SECS", 1.0)
    with socket.create_connection(address(url), timeout=0.25) as sock:
        started = time.monotonic()
        cut_after: float | None = None
        answer = b""
        for index in range(24):  # one byte every 0.25 s for up to 6 s: never a full head
            try:
                sock.send(SLOW_HEAD[index : index + 1])
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            answer += chunk
            if not chunk:
                cut_after = time.monotonic() - started
                break
    assert cut_after is not None, "the slow client was never cut"
    assert 0.9 <= cut_after <= 3.0
    assert answer == b""
    assert get(f"{url}/metrics")[0] == 200


def oversized_head(size: int) -> bytes:
    """A request head of exactly ``size`` bytes that never ends (no blank line)."""
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    number = 0
    while len(head) < size:
        head += b"X-Pad-%05d: %s\r\n" % (number, b"p" * 1000)
        number += 1
    return head[:size]


def test_a_head_over_the_size_limit_is_431(url: str) -> None:
    answer = exchange(url, oversized_head(endpoint.MAX_HEAD_BYTES + 1))
    assert answer.startswith(b"HTTP/1.0 431 "), answer[:200]
    assert get(f"{url}/metrics")[0] == 200


def test_a_request_line_over_the_size_limit_is_414(url: str) -> None:
    answer = exchange(url, b"GET /" + b"m" * endpoint.MAX_HEAD_BYTES)
    assert answer.startswith(b"HTTP/1.0 414 "), answer[:200]


def test_a_large_head_under_the_limit_is_served(url: str) -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += b"".join(b"X-Pad-%02d: %s\r\n" % (n, b"p" * 2000) for n in range(30)) + b"\r\n"
    assert len(head) > 60_000
    answer = exchange(url, head)
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"limit_requests_total 1.0" in answer


def test_held_connections_are_capped_and_a_new_scrape_gets_in(url: str) -> None:
    port = address(url)[1]
    sockets = open_flood(port, endpoint.MAX_CONNECTIONS * 2)
    try:
        trickle(sockets, 0)
        time.sleep(0.5)
        status, took, _ = timed_get(f"{url}/metrics")
        assert status == 200
        assert took < 3
        # The oldest were closed to admit the newer ones: sending on them fails.
        time.sleep(0.2)
        for _ in range(3):
            trickle(sockets, 1)
        assert sum(closed(sock) for sock in sockets) >= endpoint.MAX_CONNECTIONS - 10
    finally:
        for sock in sockets:
            sock.close()


def test_tls_clients_that_never_handshake_do_not_block_a_scrape(
    serve_facade: Callable[..., mf.Metrics], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    facade = serve_facade(tls_cert=str(cert), tls_key=str(key))
    assert facade.endpoint_url is not None
    context = ssl.create_default_context(cafile=str(cert))
    sockets = open_flood(address(facade.endpoint_url)[1], endpoint.MAX_CONNECTIONS + 50)
    try:
        time.sleep(0.5)  # connected and idle: no ClientHello ever comes
        started = time.monotonic()
        status, body = get(f"{facade.endpoint_url}/ready", context=context)
        assert status == 200
        assert json.loads(body)["status"] == "ready"
        assert time.monotonic() - started < 3
    finally:
        for sock in sockets:
            sock.close()
