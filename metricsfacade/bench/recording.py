"""What recording a request costs the proxy in CPU, measured in this process.

``metricsfacade bench`` times requests end to end, and on a virtual machine the latency a
metric adds there is blurred by how fast idle CPUs wake. This part is not: it feeds the
proxy's own bookkeeping one ``tools/call`` request and its response at a time, with each
backend configured as in the bench (and with metrics disabled), and reads the CPU time the
process spent, its background flushing included. If every microsecond of it fell on the
round trip, this is what the round trip would pay: an upper bound on the instrumentation
overhead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import metricsfacade as mf
from metricsfacade.proxy.bookkeeping import FROM_CLIENT, FROM_SERVER, NOT_PARSED, Bookkeeping
from metricsfacade.shadowcat import ShadowcatMetrics

REQUEST = (
    b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"benchmark"}}}\n'
)
RESPONSE = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"benchmark"}]}}\n'


def _config(backends: str, receiver_port: int) -> dict[str, Any]:
    if backends == "disabled":
        return {"enabled": False, "port": None}
    return {
        "port": None,
        "backends": backends.split(","),
        "statsd": {"port": receiver_port},
        "datadog": {"host": "127.0.0.1", "port": receiver_port},
    }


def cpu_per_request(
    backends: str, receiver_port: int, *, requests: int = 2000, repeats: int = 5
) -> float:
    """Median CPU seconds per request recorded, over ``repeats`` fresh facades.
    ``backends``: "disabled", or backend names joined by commas."""
    costs = []
    for _ in range(repeats):
        facade = mf.Metrics(_config(backends, receiver_port), environ={})
        books = Bookkeeping(ShadowcatMetrics(facade), "bench", 60.0)
        started = time.process_time()
        for number in range(requests):
            now = time.perf_counter()
            books.record([FROM_CLIENT, REQUEST % number, now, now, NOT_PARSED])
            books.record([FROM_SERVER, RESPONSE % number, now, now, NOT_PARSED])
        facade.close()  # what is still buffered goes out, and counts
        costs.append((time.process_time() - started) / requests)
    return statistics.median(costs)
