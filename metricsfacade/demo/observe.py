"""What the demo and the load test observe of the proxy they start: its log, its /metrics,
and their own timings of its answers.

Both read /metrics with prometheus-client's parser, from the prometheus extra that the
proxy's default backend needs anyway. Without it, importing this module raises
:class:`MissingExtraError`, so the command stops at once with one line, not after a run.
"""

from __future__ import annotations

import math
import re
import threading
import urllib.request
from collections.abc import Sequence
from typing import IO

from metricsfacade.errors import MissingExtraError

try:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
except ModuleNotFoundError as exc:
    raise MissingExtraError("prometheus", "prometheus_client", "prometheus") from exc

METRICS_URL = re.compile(r"metrics at (http\S+)")


class ProxyLog:
    """The proxy's stderr, read on a thread (so the proxy never blocks on a full pipe):
    its endpoint URL and its last lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: list[str] = []
        self._url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self._lines.append(line)
            match = METRICS_URL.search(line)
            if match and self._url is None:
                self._url = match.group(1)
                self._found.set()

    def metrics_url(self, timeout: float) -> str | None:
        self._found.wait(timeout)
        return self._url

    def tail(self) -> str:
        return "\n".join(self._lines[-10:])


def fetch(url: str) -> str:
    """The body at ``url``; "" when nothing answers (the summary then shows what it has)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def families(exposition: str) -> dict[str, Metric]:
    """The exposition's metric families by name."""
    return {family.name: family for family in text_string_to_metric_families(exposition)}


def percentile(ordered: Sequence[float], quantile: float) -> float:
    """Nearest rank: the smallest sample with at least ``quantile`` of them at or below it."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]
