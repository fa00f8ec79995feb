"""One behaviour suite for every backend (the idea of go-kit's teststat).

The same recorded operations run against each backend, and the values are read back through
that backend's real output: the memory backend's records, the Prometheus exposition parsed
by prometheus-client, and the datagrams the StatsD and Datadog backends send to a real UDP
socket, decoded by a strict parser.
"""

from __future__ import annotations

import math
import socket
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
from support import require_module, strict_statsd

import metricsfacade as mf

require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Labels = tuple[tuple[str, str], ...]


class Readout:
    """What a backend delivered, in backend-neutral terms (timers in seconds)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.observations: dict[tuple[str, Labels], list[float]] = defaultdict(list)


def record_script(m: mf.Metrics) -> None:
    """The operations every backend must carry; expected results are in EXPECTED below."""
    requests = m.counter("suite_requests_total", "Requests", labels=["method", "status"])
    requests.labels("ping", "ok").inc()
    requests.labels(method="ping", status="ok").inc(2.5)
    ping_error = requests.labels("ping", "error")
    for _ in range(10):
        ping_error.inc()
    requests.labels("tools/call", "ok").inc(0)
    level = m.gauge("suite_level", "Level", labels=["shard"])
    level.labels("a").set(7)
    level.labels("a").inc(3)
    level.labels("a").dec(0.5)
    level.labels("b").set(-4)
    level.labels("b").inc()
    sessions = m.gauge("suite_sessions", "Sessions")
    sessions.inc()
    sessions.inc()
    sessions.dec()
    sizes = m.histogram("suite_size_bytes", "Sizes", labels=["method"], buckets=[10, 100])
    for value in (5, 50, 500, 0.5):
        sizes.labels("ping").observe(value)
    latency = m.timer("suite_latency_seconds", "Latency", labels=["method"])
    latency.labels("ping").observe(0.25)
    latency.labels("ping").observe(0.0125)


EXPECTED_COUNTERS = {
    ("suite_requests_total", (("method", "ping"), ("status", "ok"))): 3.5,
    ("suite_requests_total", (("method", "ping"), ("status", "error"))): 10,
    ("suite_requests_total", (("method", "tools/call"), ("status", "ok"))): 0,
}
EXPECTED_GAUGES = {
    ("suite_level", (("shard", "a"),)): 9.5,
    ("suite_level", (("shard", "b"),)): -3,
    ("suite_sessions", ()): 1,
}
EXPECTED_OBSERVATIONS = {
    ("suite_size_bytes", (("method", "ping"),)): [0.5, 5, 50, 500],
    ("suite_latency_seconds", (("method", "ping"),)): [0.0125, 0.25],
}


# -- readers, one per backend ---------------------------------------------------------------


def read_memory(m: mf.Metrics) -> Readout:
    readout = Readout()
    for record in m.backend("memory").records():
        key = (record.name, tuple(record.labels.items()))
        if record.histogram is not None:
            readout.observations[key] = sorted(record.histogram.values)
        elif record.kind.value == "counter":
            readout.counters[key] = record.value
        else:
            readout.gauges[key] = record.value
    return readout


def read_prometheus(m: mf.Metrics) -> Readout:
    readout = Readout()
    text = m.backend("prometheus").render(None)[0].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            if family.type == "counter" and sample.name.endswith("_total"):
                readout.counters[(sample.name, labels)] = sample.value
            elif family.type == "gauge":
                readout.gauges[(sample.name, labels)] = sample.value
            elif family.type == "histogram" and sample.name.endswith(("_count", "_sum")):
                # the exposition has no raw observations: keep count and sum to compare
                readout.observations.setdefault((family.name, labels), [])
                if sample.name.endswith("_count"):
                    readout.counters[(sample.name, labels)] = sample.value
                else:
                    readout.gauges[(sample.name, labels)] = sample.value
    return readout


DOTTED = {
    "suite.requests": ("suite_requests_total", 1),
    "suite.level": ("suite_level", 1),
    "suite.sessions": ("suite_sessions", 1),
    "suite.size_bytes": ("suite_size_bytes", 1),
    "suite.latency": ("suite_latency_seconds", 1000),  # timers travel in milliseconds
}


def read_lines(lines: list[strict_statsd.Line], gauge_deltas: bool) -> Readout:
    """Plain StatsD reads a signed gauge value as a delta; DogStatsD has no deltas but packs
    several observations into one line."""
    readout = Readout()
    for line in lines:
        name, scale = DOTTED[line.name]
        key = (name, line.tags)
        if line.type == "c":
            readout.counters[key] += line.value
        elif line.type == "g":
            if gauge_deltas and line.signed:
                readout.gauges[key] = readout.gauges.get(key, 0.0) + line.value
            else:
                readout.gauges[key] = line.value
        else:
            readout.observations[key].extend(value / scale for value in line.all_values)
    for values in readout.observations.values():
        values.sort()
    return readout


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    yield sock
    sock.close()


def _drain(sock: socket.socket) -> list[strict_statsd.Line]:
    lines = []
    while True:
        try:
            lines.extend(strict_statsd.parse_datagram(sock.recv(65_536)))
        except TimeoutError:
            return [line for line in lines if not line.name.startswith("metricsfacade.")]


BACKENDS: dict[str, Callable[[int], dict[str, object]]] = {
    "memory": lambda port: {"backends": ["memory"]},
    "prometheus": lambda port: {"backends": ["prometheus"]},
    "statsd": lambda port: {"backends": ["statsd"], "statsd": {"port": port}},
    "datadog": lambda port: {
        "backends": ["datadog"],
        "datadog": {"host": "127.0.0.1", "port": port},
    },
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_delivers_the_same_values(backend, receiver):
    config = {"port": None, **BACKENDS[backend](receiver.getsockname()[1])}
    with mf.Metrics(config, environ={}) as m:
        record_script(m)
        m.flush()
        if backend == "memory":
            readout = read_memory(m)
        elif backend == "prometheus":
            readout = read_prometheus(m)
        else:
            readout = read_lines(_drain(receiver), gauge_deltas=backend == "statsd")

    for key, expected in EXPECTED_GAUGES.items():
        assert math.isclose(readout.gauges[key], expected), (backend, key, readout.gauges)
    for key, expected in EXPECTED_COUNTERS.items():
        assert math.isclose(readout.counters[key], expected), (backend, key, readout.counters)
    for (name, labels), expected in EXPECTED_OBSERVATIONS.items():
        if backend == "prometheus":  # count and sum are what the exposition carries
            assert readout.counters[(f"{name}_count", labels)] == len(expected)
            assert math.isclose(readout.gauges[(f"{name}_sum", labels)], sum(expected))
        else:
            observed = readout.observations[(name, labels)]
            assert len(observed) == len(expected), (backend, name, observed)
            for got, want in zip(observed, expected, strict=True):
                assert math.isclose(got, want, rel_tol=1e-9), (backend, name, observed)
