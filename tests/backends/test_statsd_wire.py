"""What the StatsD and Datadog backends put on the wire, read from real sockets (no mocks).

Every facade here sends to a datagram socket bound by the test (UDP on 127.0.0.1, or a Unix
datagram socket), and every line received is checked by the strict parser in
``strict_statsd.py``, which has its own small tests at the top of this file.

Reading is synchronised without sleeping: ``Wire.sync()`` flushes, records a sentinel gauge
with a fresh value, flushes again, and reads datagrams until that line arrives; everything
before it is what the test recorded. Tests that must see *nothing* arrive poll the socket
with a short timeout instead.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import sinks, strict_statsd
from support.strict_statsd import Line, MalformedLine, format_line, parse_datagram, parse_line

import metricsfacade as mf

UNSAFE = "|:#,@;="
MAX_VALUE_BYTES = 200
UDP_MAX_PACKET = 1432
UDS_MAX_PACKET = 8192
RECV_TIMEOUT = 3.0
_TOKENS = itertools.count(1_000_001)


# --------------------------------------------------------------------------------------------
# The strict parser's own tests
# --------------------------------------------------------------------------------------------

VALID_LINES = [
    ("shadowcat.requests:1|c", Line("shadowcat.requests", 1.0, "c")),
    ("a.b:+3|g", Line("a.b", 3.0, "g", signed=True)),
    ("a.b:-3|g", Line("a.b", -3.0, "g", signed=True)),
    ("a:-2.5|ms", Line("a", -2.5, "ms", signed=True)),
    ("a:1e+21|h", Line("a", 1e21, "h")),
    ("a:.5|d", Line("a", 0.5, "d")),
    ("a:7|s", Line("a", 7.0, "s")),
    ("a:1|c|@1", Line("a", 1.0, "c", rate=1.0)),
    (
        "a:0.5|ms|@0.25|#k:v,k2:,k3:x:y",
        Line("a", 0.5, "ms", 0.25, (("k", "v"), ("k2", ""), ("k3", "x:y"))),
    ),
    (
        "caf\u00e9.\U0001f600:2|c|#k:\u00e9 t",
        Line("caf\u00e9.\U0001f600", 2.0, "c", None, (("k", "\u00e9 t"),)),
    ),
    ("a:1:2.5:-3|h|@0.5|#k:v", Line("a", 1.0, "h", 0.5, (("k", "v"),), False, (2.5, -3.0))),
    (
        "a:1|c|#k:v|c:abc123|e:it-false",
        Line("a", 1.0, "c", None, (("k", "v"),), False, (), "abc123", "it-false"),
    ),
    ("a:1|c|e:x", Line("a", 1.0, "c", external="x")),
]

MALFORMED_LINES = [
    "",  # empty line
    ":1|c",  # empty name
    "a b:1|c",
    "a|b:1|c",
    "a#b:1|c",
    "a@b:1|c",
    "a\x00b:1|c",
    "a\rb:1|c",
    "a\u2028b:1|c",
    "a",  # no value
    "a:1",  # no type
    "a:|c",
    "a:x|c",
    "a:nan|g",
    "a:inf|g",
    "a:-inf|g",
    "a:1e999|g",  # overflows to inf
    "a:1_0|c",  # float() would take it
    "a: 1|c",
    "a:1 |c",
    "a:0x1|c",
    "a:+1|c",  # '+' only on gauges
    "a:++1|g",
    "a:1|x",
    "a:1|C",
    "a:1|c ",
    "a:1|",
    "a:1|c|@0",
    "a:1|c|@1.5",
    "a:1|c|@-0.5",
    "a:1|c|@",
    "a:1|c|@x",
    "a:1|c|#",  # empty tag list
    "a:1|c|#k",  # tag without ':'
    "a:1|c|#:v",  # tag without a key
    "a:1|c|#k:v,",  # empty tag
    "a:1|c|#k:v,,k2:v",
    "a:1|c|#k:v#w",
    "a:1|c|#k:a\x01",
    "a:1|c|#k:v\rx",
    "a:1|c|#k:v\u0085",
    "a:1|c|#k:v|#k2:v",  # tags twice
    "a:1|c|#k:v|@0.5",  # rate after tags
    "a:1|c|@0.5|@0.5",
    "a:1|c|x",  # trailing garbage
    "a:1|c|#k:v|",
    "a:1|c|c:",  # an empty container id
    "a:1|c|e:x|c:y",  # origin fields out of order
    "a:1|c|c:x|c:y",  # a field twice
    "a:+1:2|g",  # several values with a gauge delta
    "a:1:2|s",  # several values in a set
    "a:1:|h",  # an empty value
]


@pytest.mark.parametrize(("text", "expected"), VALID_LINES)
def test_parser_accepts_valid_lines(text, expected):
    assert parse_line(text) == expected
    assert parse_line(format_line(expected)) == expected  # format_line is its inverse


@pytest.mark.parametrize("text", MALFORMED_LINES)
def test_parser_rejects_malformed_lines(text):
    with pytest.raises(MalformedLine):
        parse_line(text)
    with pytest.raises(MalformedLine):  # and a datagram holding it after a good line
        parse_datagram(f"ok:1|c\n{text}".encode())


@pytest.mark.parametrize(
    "datagram", [b"a:1|c\n", b"\na:1|c", b"a:1|c\n\nb:1|c", b"", b"a:1|c\r\nb:1|c", b"a:\xff|c"]
)
def test_parser_rejects_bad_datagram_framing(datagram):
    with pytest.raises(MalformedLine):
        parse_datagram(datagram)


def test_parser_splits_a_datagram_into_lines():
    lines = parse_datagram(b"a:1|c\nb:-2|g|#k:v\nc:3|ms")
    assert [(line.name, line.value, line.type) for line in lines] == [
        ("a", 1.0, "c"),
        ("b", -2.0, "g"),
        ("c", 3.0, "ms"),
    ]
    assert lines[1].signed
    assert lines[1].tag_keys == ("k",)


# --------------------------------------------------------------------------------------------
# Sockets, facades and the documented rules, written independently of the library
# --------------------------------------------------------------------------------------------


class Receiver:
    """A bound datagram socket read with timeouts."""

    def __init__(self, path: Path | None = None) -> None:
        family = socket.AF_UNIX if path is not None else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(str(path) if path is not None else ("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def recv(self, timeout: float) -> bytes | None:
        """One datagram, or None if none arrives within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65_536)
        except (TimeoutError, BlockingIOError):
            return None

    def datagrams(self, count: int, timeout: float = RECV_TIMEOUT) -> list[bytes]:
        """Up to ``count`` datagrams, waiting at most ``timeout`` in all."""
        received: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            datagram = self.recv(deadline - time.monotonic())
            if datagram is None:
                break
            received.append(datagram)
        return received

    def close(self) -> None:
        self.sock.close()


class Wire:
    """A facade sending to a Receiver, with the documented rules for its configuration."""

    def __init__(
        self,
        backend: str,
        table: dict[str, Any],
        rx: Receiver,
        *,
        memory: bool = False,
        common_labels: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.rx = rx
        self.table = table
        self.common = dict(common_labels or {})
        config = {
            "port": None,
            "backends": [backend, "memory"] if memory else [backend],
            backend: table,
            "common_labels": self.common,
            "cardinality_limit": 10_000_000,
        }
        self.m = mf.Metrics(config, environ={})
        self._sentinel = self.m.gauge("wire_sentinel", "marks the end of a test's lines")
        self.datagrams: list[bytes] = []  # what the last sync() read

    # -- the documented naming and sanitizing rules --------------------------------------

    @property
    def folded(self) -> bool:
        return self.backend == "statsd" and self.table.get("tag_format") == "none"

    @property
    def prefix(self) -> str:
        return str(self.table.get("prefix" if self.backend == "statsd" else "namespace", ""))

    @property
    def histogram_type(self) -> str:
        return str(self.table.get("histogram_type", "ms" if self.backend == "statsd" else "h"))

    def name(self, dotted: str, label_values: tuple[str, ...] = ()) -> str:
        """The name on the wire: prefix, dotted name, then folded values if tags are off."""
        name = f"{self.prefix}.{dotted}" if self.prefix else dotted
        if self.folded:
            values = (*self.common.values(), *label_values)
            name = ".".join([name, *(reference_sanitize(value, True) for value in values)])
        return name

    def tags(
        self, label_names: tuple[str, ...], label_values: tuple[str, ...]
    ) -> tuple[tuple[str, str], ...]:
        """The tags on the wire: common labels, Datadog constant tags, then the metric's."""
        if self.folded:
            return ()
        pairs = [*self.common.items()]
        if self.backend == "datadog":
            pairs += [*self.table.get("constant_tags", {}).items()]
        pairs += zip(label_names, label_values, strict=True)
        return tuple((key, reference_sanitize(value, False)) for key, value in pairs)

    # -- reading ---------------------------------------------------------------------------

    def sync(self, timeout: float = RECV_TIMEOUT, *, settle: bool = False) -> list[bytes]:
        """Flush, and return every line that arrives before a fresh sentinel line.

        ``settle``: first read what the flusher thread sends on its own (a backlog of lines
        wakes it) until the socket is quiet for 0.1 s; those lines are returned too.
        """
        self.datagrams = []
        lines: list[bytes] = []
        while settle:
            datagram = self.rx.recv(0.1)
            if datagram is None:
                break
            self.datagrams.append(datagram)
            lines += datagram.split(b"\n")
        token = next(_TOKENS)
        marker = b"%d|g" % token
        self.m.flush()  # what the test recorded, then the sentinel alone in a flush of its own
        self._sentinel.set(token)
        self.m.flush()
        deadline = time.monotonic() + timeout
        while True:
            datagram = self.rx.recv(deadline - time.monotonic())
            assert datagram is not None, f"the sentinel line never arrived; lines: {lines!r}"
            self.datagrams.append(datagram)
            parts = datagram.split(b"\n")
            for index, line in enumerate(parts):
                name, _, rest = line.partition(b":")
                if b"wire.sentinel" in name and rest.startswith(marker):
                    assert parts[index + 1 :] == [], f"lines after the sentinel: {datagram!r}"
                    return lines
                lines.append(line)

    def sync_parsed(self) -> list[Line]:
        return [strict(line) for line in self.sync()]

    def dropped(self, reason: str) -> float:
        labels = {"backend": self.backend, "reason": reason}
        try:
            return self.m.backend("memory").value("metricsfacade_backend_dropped_total", labels)
        except KeyError:
            return 0.0

    def close(self) -> None:
        self.m.close()
        self.rx.close()


def strict(line: bytes) -> Line:
    """Parse one line, failing the test with the line itself if it is malformed."""
    try:
        return parse_line(line.decode("utf-8"))
    except (MalformedLine, UnicodeDecodeError) as exc:
        raise AssertionError(f"malformed line on the wire: {line!r}: {exc}") from None


def reference_sanitize(value: str, folded: bool) -> str:
    """The rule in lines.py's docstring, written from the prose: ``| : # , @ ; =`` and
    control characters (newlines included) -> ``_``; in folded names also ``.`` and
    whitespace; then cut to 200 bytes of UTF-8 without splitting a character; an empty
    folded value is ``_``."""
    out = []
    size = 0
    for char in value:
        unsafe = char in UNSAFE or strict_statsd.is_control(char)
        if folded and (char == "." or char.isspace()):
            unsafe = True
        kept = "_" if unsafe else char
        size += len(kept.encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            break
        out.append(kept)
    text = "".join(out)
    return text or ("_" if folded else "")


def same_value(got: float, expected: float) -> bool:
    return math.isclose(got, expected, rel_tol=1e-9, abs_tol=0.0)


def check_framing(datagrams: list[bytes], max_size: int) -> None:
    for datagram in datagrams:
        assert len(datagram) <= max_size, f"{len(datagram)}-byte datagram: {datagram[:80]!r}..."
        assert not datagram.endswith(b"\n"), f"trailing newline: {datagram!r}"
        parse_datagram(datagram)  # no empty line, no split line, nothing malformed


pytestmark = pytest.mark.usefixtures("no_datadog_environment")


WireFactory = Callable[..., Wire]


@pytest.fixture
def wire() -> Iterator[WireFactory]:
    """``wire("statsd", max_packet_size=200, ...)``: a facade and the socket it sends to."""
    made: list[Wire] = []

    def make(
        backend: str = "statsd",
        *,
        memory: bool = False,
        common_labels: dict[str, str] | None = None,
        unix: Path | None = None,
        rx: Receiver | None = None,
        **settings: Any,
    ) -> Wire:
        """``rx`` given: the destination comes from the environment, not the config."""
        if unix is not None:
            rx = Receiver(unix)
            table = {"socket_path": str(unix), **settings}
        elif rx is not None:
            table = settings
        else:
            rx = Receiver()
            table = {"host": "127.0.0.1", "port": rx.port, **settings}
        made.append(Wire(backend, table, rx, memory=memory, common_labels=common_labels))
        return made[-1]

    yield make
    for item in made:
        item.close()


# --------------------------------------------------------------------------------------------
# StatsD: exact lines for each kind
# --------------------------------------------------------------------------------------------


def test_statsd_counter_line(wire):
    w = wire("statsd")
    w.m.counter("shadowcat_requests_total", "h", labels=["method"]).labels("ping").inc()
    w.m.flush()
    assert w.rx.datagrams(1) == [b"shadowcat.requests:1|c|#method:ping"]


def test_statsd_common_labels_come_first(wire):
    w = wire("statsd", common_labels={"region": "eu", "az": "b"})
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["method", "code"])
    counter.labels(code="200", method="ping").inc(2)
    assert w.sync() == [b"shadowcat.requests:2|c|#region:eu,az:b,method:ping,code:200"]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_sample_rate_is_ignored_every_increment_is_counted(wire, backend, caplog):
    """Counters are summed in process, so sampling them would only lose precision: a
    configured sample_rate is ignored, with a warning."""
    w = wire(backend, sample_rate=0.5)
    child = w.m.counter("shadowcat_requests_total", "h", labels=["method"]).labels("ping")
    for _ in range(4000):
        child.inc()
    assert w.sync() == [b"shadowcat.requests:4000|c|#method:ping"]
    assert "sample_rate = 0.5 is ignored" in caplog.text


def test_statsd_gauge_lines(wire):
    """One absolute line per flush for a gauge written since the previous one: set, inc and
    dec fold into its value; a negative value is sent as 0 then the value (alone, '-N|g' is
    a delta); a gauge not written is not sent."""
    w = wire("statsd")
    gauge = w.m.gauge("shadowcat_level", "h")
    gauge.set(3)
    assert w.sync() == [b"shadowcat.level:3|g"]
    gauge.set(-3)
    gauge.inc(2)
    assert w.sync() == [b"shadowcat.level:0|g", b"shadowcat.level:-1|g"]
    gauge.dec(5)
    gauge.inc(0.5)
    assert w.sync() == [b"shadowcat.level:0|g", b"shadowcat.level:-5.5|g"]
    assert w.sync() == []  # not written: not sent
    gauge.set(2.25)
    gauge.set(2.25)
    assert w.sync() == [b"shadowcat.level:2.25|g"]
    gauge.set(2.25)  # written again, unchanged: sent, as DogStatsd's aggregation does
    assert w.sync() == [b"shadowcat.level:2.25|g"]


def test_statsd_gauge_set_negative_zero_is_not_a_delta(wire):
    """'-0|g' would be read by StatsD as a delta of 0, keeping the old value: set(-0.0) must
    send an unsigned 0."""
    w = wire("statsd")
    gauge = w.m.gauge("shadowcat_level", "h")
    gauge.set(5)
    assert w.sync_parsed() == [Line("shadowcat.level", 5.0, "g")]
    gauge.set(-0.0)
    assert w.sync() == [b"shadowcat.level:0|g"]


def test_statsd_histogram_and_timer_lines(wire):
    w = wire("statsd")
    w.m.histogram("shadowcat_payload_size_bytes", "h").observe(12.5)
    timer = w.m.timer("shadowcat_request_duration_seconds", "h", labels=["method"])
    timer.labels("ping").observe(0.25)
    with timer.labels("pong").time():
        pass
    lines = w.sync()
    assert lines[:2] == [
        b"shadowcat.payload_size_bytes:12.5|ms",
        b"shadowcat.request_duration:250|ms|#method:ping",
    ]
    timed = strict(lines[2])
    assert (timed.name, timed.type, timed.tags) == (
        "shadowcat.request_duration",
        "ms",
        (("method", "pong"),),
    )
    assert 0 <= timed.value < 1000  # milliseconds of an empty block
    assert len(lines) == 3


@pytest.mark.parametrize("histogram_type", ["h", "d", "ms"])
def test_statsd_histogram_type(wire, histogram_type):
    w = wire("statsd", histogram_type=histogram_type)
    w.m.histogram("shadowcat_payload_size", "h").observe(3)
    w.m.timer("shadowcat_request_duration_seconds", "h").observe(0.5)
    w.m.counter("shadowcat_requests_total", "h").inc()
    assert w.sync() == [  # counters, then gauges, then histograms
        b"shadowcat.requests:1|c",
        b"shadowcat.payload_size:3|" + histogram_type.encode(),
        b"shadowcat.request_duration:500|" + histogram_type.encode(),
    ]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_timer_too_large_for_milliseconds_never_sends_inf(wire, backend):
    """A finite duration whose milliseconds overflow (observe(1e306) -> 1e309 ms) is dropped
    and counted as out_of_range: 'inf|ms' is a line no reader accepts."""
    w = wire(backend)
    w.m.timer("shadowcat_request_duration_seconds", "h").observe(1e306)
    lines = [strict(line) for line in w.sync()]
    assert "shadowcat.request_duration" not in [line.name for line in lines]
    dropped = [line for line in lines if line.name == "metricsfacade.dropped"]
    assert [(line.value, line.tag_dict["reason"]) for line in dropped] == [(1, "out_of_range")]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_largest_finite_values_are_sent_readably(wire, backend):
    """Values are written with enough digits to read back exactly: with '%.15g',
    sys.float_info.max went out as '1.79769313486232e+308', above the largest double."""
    w = wire(backend)
    biggest = sys.float_info.max
    w.m.counter("shadowcat_requests_total", "h").inc(biggest)
    w.m.gauge("shadowcat_level", "h").set(biggest)
    # a negative bucket: such a histogram takes negative observations
    w.m.histogram("shadowcat_payload_size", "h", buckets=[-1, 0]).observe(-biggest)
    lines = [strict(line) for line in w.sync()]
    assert [line.name for line in lines] == [
        "shadowcat.requests",
        "shadowcat.level",
        "shadowcat.payload_size",
    ]
    for line, value in zip(lines, [biggest, biggest, -biggest], strict=True):
        assert same_value(line.value, value), line


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_counter_total_overflow_never_sends_inf(wire, backend):
    """The increment that would take a counter's total to infinity is dropped and counted
    as out_of_range; the total so far stays exact and readable."""
    w = wire(backend)
    counter = w.m.counter("shadowcat_requests_total", "h")
    counter.inc(1e308)
    counter.inc(1e308)
    lines = [strict(line) for line in w.sync()]
    assert [line.value for line in lines if line.name == "shadowcat.requests"] == [1e308]
    reasons = [line.tag_dict["reason"] for line in lines if line.name == "metricsfacade.dropped"]
    assert reasons == ["out_of_range"]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_gauge_sum_overflow_never_sends_inf(wire, backend):
    """A gauge's value must not overflow to 'inf|g': the increment that would overflow it
    is dropped and counted as out_of_range."""
    w = wire(backend)
    gauge = w.m.gauge("shadowcat_level", "h")
    gauge.set(1e308)
    gauge.inc(1e308)
    lines = [strict(line) for line in w.sync()]
    assert [line.value for line in lines if line.name == "shadowcat.level"] == [1e308]
    reasons = [line.tag_dict["reason"] for line in lines if line.name == "metricsfacade.dropped"]
    assert reasons == ["out_of_range"]


# --------------------------------------------------------------------------------------------
# StatsD with tag_format = "none": labels folded into the name
# --------------------------------------------------------------------------------------------


def test_statsd_labels_folded_into_name(wire):
    w = wire("statsd", tag_format="none", prefix="app.prod", common_labels={"region": "eu.west 1"})
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["method", "path"])
    counter.labels("GET", "/a.b c").inc()
    counter.labels(path="", method="\tPOST\n").inc(4)
    w.m.gauge("shadowcat_level", "h", labels=["pool"]).labels("db 1").set(-2)
    w.m.timer("shadowcat_request_duration_seconds", "h").observe(0.125)
    assert w.sync() == [
        b"app.prod.shadowcat.requests.eu_west_1.GET./a_b_c:1|c",
        b"app.prod.shadowcat.requests.eu_west_1._POST_._:4|c",
        b"app.prod.shadowcat.level.eu_west_1.db_1:0|g",
        b"app.prod.shadowcat.level.eu_west_1.db_1:-2|g",
        b"app.prod.shadowcat.request_duration.eu_west_1:125|ms",
    ]


def test_statsd_prefix_with_tags(wire):
    w = wire("statsd", prefix="app")
    w.m.counter("shadowcat:http_requests_total", "h").inc()
    assert w.sync() == [b"app.shadowcat.http.requests:1|c"]


# --------------------------------------------------------------------------------------------
# Datadog
# --------------------------------------------------------------------------------------------


def test_datadog_lines(wire):
    w = wire(
        "datadog",
        namespace="svc",
        constant_tags={"team": "core"},
        common_labels={"region": "eu"},
    )
    w.m.counter("shadowcat_requests_total", "h", labels=["method"]).labels("ping").inc()
    w.m.histogram("shadowcat_payload_size", "h").observe(7)
    w.m.timer("shadowcat_request_duration_seconds", "h").observe(0.25)
    assert w.sync() == [
        b"svc.shadowcat.requests:1|c|#region:eu,team:core,method:ping",
        b"svc.shadowcat.payload_size:7|h|#region:eu,team:core",
        b"svc.shadowcat.request_duration:250|h|#region:eu,team:core",
    ]


def test_datadog_distribution_type(wire):
    w = wire("datadog", histogram_type="d")
    w.m.histogram("shadowcat_payload_size", "h").observe(7)
    w.m.timer("shadowcat_request_duration_seconds", "h").observe(0.002)
    assert w.sync() == [b"shadowcat.payload_size:7|d", b"shadowcat.request_duration:2|d"]


def test_datadog_gauges_are_absolute(wire):
    w = wire("datadog")
    gauge = w.m.gauge("shadowcat_level", "h", labels=["pool"])
    gauge.labels("a").set(5)
    gauge.labels("a").inc(2)
    gauge.labels("b").inc()
    assert w.sync() == [b"shadowcat.level:7|g|#pool:a", b"shadowcat.level:1|g|#pool:b"]
    gauge.labels("a").dec(10)
    assert w.sync() == [b"shadowcat.level:-3|g|#pool:a"]
    gauge.labels("a").set(-4)
    gauge.labels("a").inc(0.5)
    assert w.sync() == [b"shadowcat.level:-3.5|g|#pool:a"]


def test_datadog_packs_observations_into_multi_value_lines(wire):
    """DogStatsD protocol 1.1: the observations of a flush share one line per series, as
    many as fit a packet; the shortest text that reads back as the same float."""
    w = wire("datadog", max_packet_size=200)
    histogram = w.m.histogram("shadowcat_payload_size", "h", labels=["k"], buckets=[-1, 0, 10])
    for value in (7, 12.3, -0.5):
        histogram.labels("a").observe(value)
    assert w.sync() == [b"shadowcat.payload_size:7:12.3:-0.5|h|#k:a"]
    values = [float(index) + 0.25 for index in range(100)]
    for value in values:
        histogram.labels("b").observe(value)
    lines = [strict(line) for line in w.sync()]
    assert len(lines) > 1
    assert all(len(format_line(line)) <= 200 for line in lines)
    assert [value for line in lines for value in line.all_values] == values


def test_datadog_origin_detection_and_environment_tags(wire, monkeypatch):
    """DD_EXTERNAL_ENV goes out as the |e: field, DD_ENTITY_ID as dd.internal.entity_id,
    DD_TAGS and DATADOG_TAGS as tags, as DogStatsd itself sends them."""
    monkeypatch.setenv("DD_EXTERNAL_ENV", "it-false,cn-app,pu-1234")
    monkeypatch.setenv("DD_ENTITY_ID", "pod-uid-1")
    monkeypatch.setenv("DD_TAGS", "team:core stage:beta")
    monkeypatch.setenv("DATADOG_TAGS", "zone:a")
    monkeypatch.setenv("DD_ORIGIN_DETECTION_ENABLED", "false")
    w = wire("datadog")
    w.m.counter("shadowcat_requests_total", "h").inc()
    (line,) = w.sync_parsed()
    assert line.tag_dict == {
        "zone": "a",
        "dd.internal.entity_id": "pod-uid-1",
        "team": "core",
        "stage": "beta",
    }
    assert line.external == "it-false_cn-app_pu-1234"  # ',' may not appear in the field
    assert line.container is None  # origin detection switched off


def test_datadog_unified_service_tags_from_environment(wire, monkeypatch):
    monkeypatch.setenv("DD_ENV", "prod")
    monkeypatch.setenv("DD_SERVICE", "shadowcat")
    monkeypatch.setenv("DD_VERSION", "1.2.3")
    w = wire("datadog", constant_tags={"team": "core"})
    w.m.counter("shadowcat_requests_total", "h", labels=["method"]).labels("ping").inc()
    assert w.sync() == [
        b"shadowcat.requests:1|c|#team:core,env:prod,service:shadowcat,version:1.2.3,method:ping"
    ]


@pytest.mark.parametrize("variables", ["host_and_port", "url"])
def test_datadog_destination_from_environment(wire, monkeypatch, variables):
    rx = Receiver()
    if variables == "url":
        monkeypatch.setenv("DD_DOGSTATSD_URL", f"udp://127.0.0.1:{rx.port}")
    else:
        monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
        monkeypatch.setenv("DD_DOGSTATSD_PORT", str(rx.port))
    w = wire("datadog", rx=rx)
    w.m.counter("shadowcat_requests_total", "h").inc()
    assert w.sync() == [b"shadowcat.requests:1|c"]


def test_datadog_configured_destination_wins_over_environment(wire, monkeypatch):
    decoy = Receiver()
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", str(decoy.port))
    try:
        w = wire("datadog")
        w.m.counter("shadowcat_requests_total", "h").inc()
        assert w.sync() == [b"shadowcat.requests:1|c"]
        assert decoy.recv(0.05) is None
    finally:
        decoy.close()


def test_datadog_unix_datagram_socket(wire, tmp_path):
    w = wire("datadog", unix=tmp_path / "dsd.sock")
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["n"])
    counter.labels("0").inc()
    assert w.sync() == [b"shadowcat.requests:1|c|#n:0"]
    # The default packet on a Unix socket is 8192 bytes, not UDP's 1432.
    for index in range(300):
        counter.labels(str(index)).inc()
    lines = w.sync(settle=True)
    assert len(lines) == 300
    assert lines[-1] == b"shadowcat.requests:1|c|#n:299"
    sizes = [len(datagram) for datagram in w.datagrams]
    assert max(sizes) > UDP_MAX_PACKET, sizes
    check_framing(w.datagrams, UDS_MAX_PACKET)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
@pytest.mark.parametrize("max_packet_size", [200, None])
def test_packets_are_full_and_never_split_a_line(wire, backend, max_packet_size):
    settings = {"flush_interval_secs": 60.0}
    if max_packet_size is not None:
        settings["max_packet_size"] = max_packet_size
    limit = max_packet_size or UDP_MAX_PACKET
    w = wire(backend, **settings)
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["path"])
    gauge = w.m.gauge("shadowcat_level", "h", labels=["n"])
    counters, gauges = [], []
    for index in range(400):
        path = f"{index:03d}" + "p" * (index % 37)  # lines of varying length
        counter.labels(path).inc(index + 1)
        counters.append(b"shadowcat.requests:%d|c|#path:%s" % (index + 1, path.encode()))
        if index % 50 == 0:
            gauge.labels(str(index)).set(-index - 1)
            first = b"0|g" if backend == "statsd" else b"%d|g" % (-index - 1)
            gauges.append(b"shadowcat.level:" + first + b"|#n:%d" % index)
            if backend == "statsd":
                gauges.append(b"shadowcat.level:%d|g|#n:%d" % (-index - 1, index))
    lines = w.sync(settle=True)
    assert lines == counters + gauges  # every line whole, counters then gauges
    datagrams = w.datagrams[:-1]  # the sentinel's own flush aside
    check_framing(datagrams, limit)
    assert len(datagrams) > 5
    for datagram, following in itertools.pairwise(datagrams):
        unit = following.split(b"\n")[0]
        if backend == "statsd" and unit.startswith(b"shadowcat.level:0|g"):
            unit = b"\n".join(following.split(b"\n")[:2])  # reset and value: one unit
        # Greedy packing: the next unit would not have fitted.
        assert len(datagram) + 1 + len(unit) > limit, (datagram, unit)
    if backend == "statsd":  # the reset-and-value pair of a negative gauge never splits
        for datagram in datagrams:
            assert not datagram.startswith(b"shadowcat.level:-"), datagram


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_line_longer_than_packet_is_dropped_and_counted(wire, backend):
    w = wire(backend, memory=True, max_packet_size=64)
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["path"])
    counter.labels("short").inc()
    counter.labels("x" * 100).inc()
    counter.labels("short").inc(2)
    lines = w.sync()
    assert b"shadowcat.requests:3|c|#path:short" in lines
    assert not any(b"xxx" in line for line in lines)
    check_framing(w.datagrams, 64)
    assert w.dropped("line_too_long") == 1


def test_label_values_cut_to_200_bytes_keep_the_line_within_a_udp_packet(wire):
    """Values are cut to 200 bytes of UTF-8, not characters: two values of 300 four-byte
    emoji still make a line that fits the default 1432-byte UDP packet."""
    w = wire("statsd", memory=True)
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["a", "b"])
    counter.labels("\U0001f600" * 300, "\U0001f431" * 300).inc()
    lines = w.sync()
    assert w.dropped("line_too_long") == 0
    assert len(lines) == 1, lines
    line = strict(lines[0])
    assert line.tag_keys == ("a", "b")
    assert set(line.tag_dict["a"]) == {"\U0001f600"}
    assert set(line.tag_dict["b"]) == {"\U0001f431"}


# --------------------------------------------------------------------------------------------
# Buffering and delivery
# --------------------------------------------------------------------------------------------


def test_partial_packet_sent_after_flush_interval_without_flush(wire):
    w = wire("statsd", flush_interval_secs=0.2)
    w.m.counter("shadowcat_requests_total", "h").inc()
    started = time.monotonic()
    assert w.rx.datagrams(1, timeout=1.5) == [b"shadowcat.requests:1|c"]
    assert time.monotonic() - started < 1.5


def test_nothing_sent_before_flush_with_a_long_interval(wire):
    w = wire("statsd", flush_interval_secs=60.0)
    w.m.counter("shadowcat_requests_total", "h").inc()
    assert w.rx.recv(0.3) is None
    w.m.flush()
    assert w.rx.datagrams(1) == [b"shadowcat.requests:1|c"]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_one_line_per_changed_series_per_flush_however_many_recordings(wire, backend):
    """A tight loop between two flushes costs one line per series that changed: nothing
    waits in a queue, so nothing can overflow one."""
    w = wire(backend, flush_interval_secs=60.0)
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["n"])
    children = [counter.labels(str(index)) for index in range(3)]
    gauge = w.m.gauge("shadowcat_level", "h")
    for index in range(200_000):
        children[index % 3].inc()
        gauge.set(index)
    untouched = w.m.counter("shadowcat_idle_total", "h")
    untouched.inc(0)
    assert w.sync() == [
        b"shadowcat.requests:66667|c|#n:0",
        b"shadowcat.requests:66667|c|#n:1",
        b"shadowcat.requests:66666|c|#n:2",
        b"shadowcat.level:199999|g",
    ]


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_close_sends_what_is_buffered(wire, backend):
    w = wire(backend, flush_interval_secs=60.0)
    counter = w.m.counter("shadowcat_requests_total", "h")
    counter.inc(3)
    w.m.close()
    assert w.rx.datagrams(1) == [b"shadowcat.requests:3|c"]
    counter.inc()  # a no-op once closed
    w.m.flush()
    assert w.rx.recv(0.1) is None


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import metricsfacade as mf

    backend, port = sys.argv[1], int(sys.argv[2])
    table = {"host": "127.0.0.1", "port": port, "flush_interval_secs": 3600}
    mf.configure({"port": None, "backends": [backend], backend: table}, environ={})
    mf.counter("shadowcat_requests_total", "h", labels=["method"]).labels("exit").inc(3)
    mf.gauge("shadowcat_level", "h").set(2)
    """
)


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_lines_delivered_at_interpreter_exit_without_close(backend):
    rx = Receiver()
    try:
        env = {k: v for k, v in os.environ.items() if k not in sinks.DD_VARIABLES}
        result = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, backend, str(rx.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert rx.datagrams(1) == [b"shadowcat.requests:3|c|#method:exit\nshadowcat.level:2|g"]
    finally:
        rx.close()


@pytest.mark.parametrize("backend", ["statsd", "datadog"])
def test_recording_sends_nothing_until_flush(wire, backend):
    w = wire(backend, flush_interval_secs=3600.0, max_packet_size=60_000)
    counter = w.m.counter("shadowcat_requests_total", "h", labels=["n"])
    for index in range(50):
        counter.labels(str(index % 5)).inc()
    assert w.rx.recv(0.2) is None  # 50 recordings, no datagram
    w.m.flush()
    datagrams = w.rx.datagrams(1)
    assert len(datagrams) == 1
    lines = parse_datagram(datagrams[0])  # one datagram, a line per series
    assert [(line.tag_dict["n"], line.value) for line in lines] == [
        (str(n), 10.0) for n in range(5)
    ]
    assert w.rx.recv(0.05) is None


# --------------------------------------------------------------------------------------------
# Injection: hostile names and label values
# --------------------------------------------------------------------------------------------

HOSTILE_VALUES = [
    "a|b",
    "a:b",
    "a#b",
    "a,b",
    "a@b",
    "a;b",
    "a=b",
    "k:v|#evil:1,x:y",
    "line\nbreak:1|c",
    "cr\rlf\r\n",
    "nul\x00byte",
    "\x1b[31mred\x1b[0m",
    "tab\there",
    "\x7f\x85\u2028\u2029",
    "\U0001f600 emoji",
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "%s%d%%",
    "dots.and spaces",
    "",
    " ",
    "x" * 300,
]

CONFIGS = {
    "statsd-tags": ("statsd", {"prefix": "app"}),
    "statsd-folded": ("statsd", {"tag_format": "none", "prefix": "app"}),
    "datadog": ("datadog", {"namespace": "app", "constant_tags": {"team": "core"}}),
}


class SharedWire(Wire):
    """A Wire with one metric of each kind, all labelled ``a`` and ``b``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = self.m.counter("prop_events_total", "h", labels=["a", "b"])
        self.gauge = self.m.gauge("prop_level", "h", labels=["a", "b"])
        # negative buckets: both take the negative values the examples hold
        self.histogram = self.m.histogram("prop_size", "h", labels=["a", "b"], buckets=[-1, 1])
        self.timer = self.m.timer("prop_latency_seconds", "h", labels=["a", "b"], buckets=[-1, 1])


@pytest.fixture(scope="module", params=list(CONFIGS))
def shared_wire(request) -> Iterator[SharedWire]:
    """One facade and socket per configuration, reused by many examples."""
    backend, settings = CONFIGS[request.param]
    with pytest.MonkeyPatch.context() as patch:
        for name in sinks.DD_VARIABLES:
            patch.delenv(name, raising=False)
        rx = Receiver()
        table = {"host": "127.0.0.1", "port": rx.port, "max_packet_size": 60_000, **settings}
        table["flush_interval_secs"] = 3600.0
        w = SharedWire(backend, table, rx, common_labels={"region": "eu|1,x:y"})
    w.sync()
    yield w
    w.close()


class Recording(NamedTuple):
    """One example: label values and one value per kind (``seconds`` for the timer)."""

    values: tuple[str, str]
    count: float
    level: float
    size: float
    seconds: float


Expected = tuple[str, str, float, tuple[tuple[str, str], ...], "bool | None"]


def expected_lines(w: SharedWire, rec: Recording) -> list[Expected]:
    """(name, type, value, tags, signed or None for "any") for the four recordings."""
    tags = w.tags(("a", "b"), rec.values)
    lines: list[Expected] = []
    if rec.count > 0:  # a counter that did not grow is not sent
        lines.append((w.name("prop.events", rec.values), "c", rec.count, tags, None))
    gauge_name = w.name("prop.level", rec.values)
    if w.backend == "statsd" and rec.level < 0:  # documented: reset to 0, then the value
        lines.append((gauge_name, "g", 0.0, tags, False))
        lines.append((gauge_name, "g", rec.level, tags, True))
    else:  # in plain StatsD an absolute value must not look like a delta
        lines.append((gauge_name, "g", rec.level, tags, False if w.backend == "statsd" else None))
    lines.append((w.name("prop.size", rec.values), w.histogram_type, rec.size, tags, None))
    milliseconds = rec.seconds * 1000.0
    lines.append((w.name("prop.latency", rec.values), w.histogram_type, milliseconds, tags, None))
    return lines


def record_and_check(w: SharedWire, rec: Recording) -> None:
    w.counter.labels(*rec.values).inc(rec.count)
    w.gauge.labels(*rec.values).set(rec.level)
    w.histogram.labels(*rec.values).observe(rec.size)
    w.timer.labels(*rec.values).observe(rec.seconds)
    raw = w.sync()
    got = [strict(line) for line in raw]
    expected = expected_lines(w, rec)
    assert len(got) == len(expected), raw
    for line, (name, metric_type, value, tags, signed) in zip(got, expected, strict=True):
        assert (line.name, line.type, line.tags) == (name, metric_type, tags), line
        assert same_value(line.value, value), (line, value)
        assert line.rate is None
        if signed is not None:
            assert line.signed is signed, (line, raw)


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_label_values_give_one_well_formed_line_each(shared_wire, value):
    record_and_check(shared_wire, Recording((value, "ok"), 2.0, 3.5, 7.0, 0.25))
    shared_wire.counter.labels(value, "ok").inc()
    shared_wire.counter.labels("".join(list(value)), "ok").inc()  # another str object
    (again,) = shared_wire.sync()  # the same input is the same series
    assert strict(again).value == 2


def test_hostile_metric_names_are_refused_at_declaration():
    m = mf.Metrics()
    for name in ["a|b", "a#b", "a@b", "a,b", "a b", "a\nb", "a.b", "caf\u00e9", "a=b", ""]:
        with pytest.raises(mf.DeclarationError):
            m.counter(name, "h")
    for label in ["a|b", "a:b", "a b", "\u00e9"]:
        with pytest.raises(mf.DeclarationError):
            m.counter("ok_total", "h", labels=[label])


# --------------------------------------------------------------------------------------------
# The property (the requirement)
# --------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
recordings = st.builds(
    Recording,
    values=st.tuples(st.text(), st.text()),
    # a series' total may not overflow (that drop has its own test, below the gauge's)
    count=st.floats(min_value=0, max_value=1e300),
    level=finite,
    size=finite,
    # durations whose milliseconds overflow are dropped (see the out_of_range test above)
    seconds=st.floats(min_value=-1e300, max_value=1e300),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rec=recordings)
def test_every_recording_is_one_well_formed_line_at_the_next_flush(shared_wire, rec):
    """For both tag formats of StatsD and for Datadog: each recording is exactly one line
    at the next flush (a negative StatsD gauge the documented pair; a counter that did not
    grow none) that decodes back to what was recorded."""
    record_and_check(shared_wire, rec)
