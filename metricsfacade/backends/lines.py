"""StatsD and DogStatsD lines: naming convention, sanitizing, and per-series templates.

Naming convention (canonical Prometheus-style name -> dotted name):

1. drop the suffix that only Prometheus uses: ``_total`` on counters, ``_seconds`` on timers
   (timers are sent in milliseconds, the StatsD habit);
2. ``:`` becomes ``.``, and the first ``_`` becomes ``.`` (it separates the namespace) unless
   it starts or ends the name or touches another ``_`` or ``.``; an empty segment becomes
   ``_``;
3. prepend the configured prefix (StatsD) or namespace (Datadog) and a dot.

So ``shadowcat_requests_total`` is ``shadowcat.requests`` and
``shadowcat_request_duration_seconds`` is ``shadowcat.request_duration`` (in ms).

Sanitizing: a label value can never break a line. Each of ``| : # , @ ; =``, every control
character (newlines included) and, where labels are folded into the name (``tag_format =
"none"``), ``.`` and whitespace are replaced by ``_``; then values are cut to 200 bytes of
UTF-8 (at a character boundary); an empty value becomes ``_`` in a folded name. The same input
always gives the same output.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from metricsfacade.spec import Kind, MetricSpec

#: Longest label value sent, in UTF-8 bytes: a line with a few cut values still fits a UDP
#: packet; one that does not is dropped and counted as line_too_long.
MAX_TAG_VALUE_BYTES = 200
_UNSAFE = "|:#,@;="
_FOLDED_UNSAFE = _UNSAFE + "."


def dotted_name(spec: MetricSpec, prefix: str = "") -> str:
    """The metric's StatsD/Datadog name under the naming convention above: never empty, and
    never with an empty segment (``a::b`` is ``a._.b``). Two metrics that would get the same
    name are refused at declaration (see ``Metrics``)."""
    name = spec.name
    suffix = {Kind.COUNTER: "_total", Kind.TIMER: "_seconds"}.get(spec.kind, "")
    if suffix and name.endswith(suffix) and len(name) > len(suffix):
        name = name[: -len(suffix)]
    name = name.replace(":", ".")
    first = name.find("_")
    if 0 < first < len(name) - 1 and name[first - 1] != "." and name[first + 1] not in "._":
        name = name[:first] + "." + name[first + 1 :]
    name = ".".join(segment or "_" for segment in name.split("."))
    return f"{prefix}.{name}" if prefix else name


@lru_cache(maxsize=4096)
def sanitize(value: str, folded: bool = False) -> str:
    """Make a label value safe inside a line (see the module docstring for the rule)."""
    unsafe = _FOLDED_UNSAFE if folded else _UNSAFE
    cleaned = "".join(
        "_"
        if char in unsafe
        or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")
        or (folded and char.isspace())
        else char
        for char in value
    )
    return _cut(cleaned) or ("_" if folded else "")


def _cut(value: str) -> str:
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_TAG_VALUE_BYTES:
        return value
    return encoded[:MAX_TAG_VALUE_BYTES].decode("utf-8", "ignore")


def statsd_type(spec: MetricSpec, histogram_type: str) -> str:
    """The line type: c, g, or the configured one for histograms and timers."""
    if spec.kind is Kind.COUNTER:
        return "c"
    if spec.kind is Kind.GAUGE:
        return "g"
    return histogram_type


def format_number(value: float) -> str:
    """The shortest text that reads back as exactly ``value``: ``3``, ``12.3``, ``1e+21``."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def format_rate(rate: float) -> str:
    """``|@rate`` for a sampled line, in plain decimals (the Etsy daemon reads no exponent),
    or nothing when every value is sent."""
    if rate >= 1:
        return ""
    return "|@" + f"{rate:.17f}".rstrip("0")


class SeriesFormat:
    """The fixed parts of one series' lines: ``<key>:`` and the tags after the type.

    ``line("3", "c")`` gives ``key:3|c|#k:v``; with ``tag_format = "none"`` the label values
    are folded into the key instead (``name.v1.v2:3|c``).
    """

    __slots__ = ("head", "key", "tail")

    def __init__(
        self, name: str, tags: Sequence[tuple[str, str]], tag_format: str, trailer: str = ""
    ) -> None:
        if tag_format == "none":
            key = ".".join([name, *(sanitize(value, folded=True) for _, value in tags)])
            tag_text = ""
        else:
            key = name
            tag_text = "|#" + ",".join(f"{k}:{sanitize(v)}" for k, v in tags) if tags else ""
        #: the series key as the receiver sees it (name, or the folded name)
        self.key = key
        self.head = key + ":"
        self.tail = tag_text + trailer

    def line(self, values: str, metric_type: str, rate: str = "") -> bytes:
        return f"{self.head}{values}|{metric_type}{rate}{self.tail}".encode()
