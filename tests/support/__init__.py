"""What the tests share, besides the fixtures of ``tests/conftest.py``. Standard library only
at import time (prometheus-client is imported by the helpers that parse an exposition).

- :func:`eventually` (and :func:`eventually_async` from an event loop): the one poller. Every
  test that waits for something asynchronous (a thread, a socket, a child process, a real
  sink) polls with it instead of sleeping.
- :func:`require_module`: ``pytest.importorskip`` for optional extras, except that under
  ``REQUIRE_REAL_SINKS=1`` (CI) a missing module fails the test instead of skipping it.
- :func:`scrape`, :func:`families`, :func:`samples`, :func:`bucket_bounds`: a Prometheus
  exposition, from a facade (rendered in process) or from a URL, and parsed.
- :func:`counted`, :func:`observed`: values a :class:`~metricsfacade.testing.MetricsMock`
  holds, summed over the series whose labels include some labels (MetricsMock's own
  ``assert_*`` methods match exact label sets and return nothing to poll or compare).
- :func:`closed_udp_port`, :func:`clean_environ`, :data:`REPO`.

Submodules: :mod:`support.sinks` (real sinks: a Prometheus server, promtool, the Etsy StatsD
daemon, the MCP reference server, UDP line sinks) and :mod:`support.strict_statsd` (a strict
StatsD/DogStatsD line parser).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

if TYPE_CHECKING:
    import metricsfacade as mf
    from metricsfacade.testing import MetricsMock, Record

#: The repository (or unpacked sdist) root: tests never depend on the current directory.
REPO = Path(__file__).resolve().parents[2]

#: Set to 1 to turn "tool (or optional module) not found, skipped" into a test failure.
REQUIRE_ENV = "REQUIRE_REAL_SINKS"

#: How long :func:`eventually` waits by default: generous, for a loaded 2-core machine.
EVENTUALLY_TIMEOUT_SECS = 5.0
EVENTUALLY_INTERVAL_SECS = 0.01

T = TypeVar("T")


# -- skipping, or failing under CI -----------------------------------------------------------


def sinks_required() -> bool:
    """True when REQUIRE_REAL_SINKS asks for real sinks (and optional modules) to be
    mandatory."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def unavailable(message: str) -> NoReturn:
    """Skip the test because something it needs is missing, or fail it under
    REQUIRE_REAL_SINKS=1."""
    if sinks_required():
        pytest.fail(f"{REQUIRE_ENV}=1 but {message}", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")


def require_module(name: str) -> ModuleType:
    """Import optional module ``name`` (an extra, a web framework, the MCP SDK...).

    At a test module's top level, a missing module skips the whole module (as
    ``pytest.importorskip`` does) instead of failing its collection; under
    ``REQUIRE_REAL_SINKS=1`` it is imported plainly, so a missing module fails instead of
    skipping silently (CI installs everything)."""
    if sinks_required():
        return importlib.import_module(name)
    return pytest.importorskip(name)


# -- the one poller ----------------------------------------------------------------------------


def _describe(message: str | Callable[[], str], timeout: float, last: object) -> str:
    text = message() if callable(message) else message
    return f"{text or 'condition'}: still not true after {timeout:g} s (last value {last!r})"


def eventually(
    predicate: Callable[[], T],
    timeout: float = EVENTUALLY_TIMEOUT_SECS,
    interval: float = EVENTUALLY_INTERVAL_SECS,
    *,
    message: str | Callable[[], str] = "",
    fail: bool = True,
) -> T:
    """Call ``predicate()`` every ``interval`` s until it returns a truthy value, and return
    that value.

    After ``timeout`` s (``predicate`` is always called at least once, and once more at the
    deadline) it raises AssertionError naming ``message`` (a string, or a callable for
    diagnostics gathered only on failure) and the last value; with ``fail=False`` it returns
    the last (falsy) value instead, for a caller that asserts on what it holds. Exceptions
    raised by ``predicate`` propagate at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if fail:
                raise AssertionError(_describe(message, timeout, value))
            return value
        time.sleep(min(interval, remaining))


async def eventually_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = EVENTUALLY_TIMEOUT_SECS,
    interval: float = EVENTUALLY_INTERVAL_SECS,
    *,
    message: str | Callable[[], str] = "",
    fail: bool = True,
) -> T:
    """:func:`eventually` from a coroutine (asyncio or anyio on asyncio): waits with
    ``asyncio.sleep`` so the event loop runs meanwhile. ``predicate`` may be a coroutine
    function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if fail:
                raise AssertionError(_describe(message, timeout, value))
            return value  # type: ignore[return-value]
        await asyncio.sleep(min(interval, remaining))


# -- Prometheus expositions --------------------------------------------------------------------


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body). HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


def scrape(source: mf.Metrics | str, accept: str | None = None) -> str:
    """The Prometheus exposition as text: rendered by a facade's ``prometheus`` backend (in
    process, no HTTP), or fetched from a URL (``.../metrics``), which must answer 200.
    ``accept``: the Accept header (``application/openmetrics-text`` for OpenMetrics)."""
    if isinstance(source, str):
        headers = {"Accept": accept} if accept else {}
        status, _, body = http_get(source, headers)
        assert status == 200, f"GET {source} answered {status}: {body[:500]!r}"
        return body.decode()
    backend: Any = source.backend("prometheus")
    body, _content_type = backend.render(accept)
    return bytes(body).decode()


def families(text: str, *, openmetrics: bool = False) -> dict[str, Any]:
    """The exposition parsed by prometheus-client, by family name as declared (counters keep
    their ``_total``); a family exposed twice fails."""
    parser = require_module(
        "prometheus_client.openmetrics.parser" if openmetrics else "prometheus_client.parser"
    )
    parsed: dict[str, Any] = {}
    for family in parser.text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert name not in parsed, f"{name} exposed twice:\n{text}"
        parsed[name] = family
    return parsed


def bucket_bounds(family: Any) -> tuple[float, ...]:
    """The finite bucket bounds (``le``) a parsed histogram family exposes, sorted."""
    return tuple(
        sorted(
            {
                float(sample.labels["le"])
                for sample in family.samples
                if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf"
            }
        )
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str, *, openmetrics: bool = False) -> Samples:
    """Every sample of the exposition: ``{(name, frozenset(labels.items())): value}``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families(text, openmetrics=openmetrics).values()
        for sample in family.samples
    }


# -- values a MetricsMock holds -----------------------------------------------------------------


def _matching(mock: MetricsMock, name: str, labels: Mapping[str, str]) -> list[Record]:
    return [
        record
        for record in mock.records(name)
        if all(record.labels.get(key) == value for key, value in labels.items())
    ]


def counted(mock: MetricsMock, name: str, **labels: str) -> float:
    """A counter summed over the series whose labels include ``labels`` (or a gauge's
    value); 0 when there is none."""
    return sum(record.value or 0.0 for record in _matching(mock, name, labels))


def observed(mock: MetricsMock, name: str, **labels: str) -> list[float]:
    """Every value observed by the histogram series whose labels include ``labels``."""
    return [
        value
        for record in _matching(mock, name, labels)
        if record.histogram is not None
        for value in record.histogram.values
    ]


# -- sockets and processes ---------------------------------------------------------------------


def receive_datagrams(
    sock: socket.socket, done: Callable[[list[bytes]], bool], timeout: float = 5.0
) -> list[bytes]:
    """Datagrams read from ``sock`` until ``done(datagrams)`` holds or ``timeout`` s pass;
    each must parse as StatsD (``strict_statsd``), or the test fails."""
    from support import strict_statsd  # noqa: PLC0415 (a submodule of this package)

    datagrams: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not done(datagrams):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(65_536)
        except TimeoutError:
            break
        strict_statsd.parse_datagram(data)
        datagrams.append(data)
    return datagrams


def closed_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def clean_environ(**extra: str) -> dict[str, str]:
    """A copy of the environment without ``METRICSFACADE_*`` settings (plus ``extra``), for
    child processes."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("METRICSFACADE_")}
    return {**environ, **extra}
