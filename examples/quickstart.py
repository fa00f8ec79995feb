"""Serve real metrics: declare, record simulated traffic, and expose /metrics, /health, /ready.

    python examples/quickstart.py [--port 9090] [--duration SECONDS]

Then, in another terminal:
    curl http://127.0.0.1:9090/metrics
    curl http://127.0.0.1:9090/health
    curl http://127.0.0.1:9090/ready
"""

from __future__ import annotations

import argparse
import random
import time

import metricsfacade as mf

# Declared at import time, as a library would: they bind when configure() runs.
REQUESTS = mf.counter("demo_requests_total", "Requests handled", labels=["method", "status"])
IN_FLIGHT = mf.gauge("demo_in_flight", "Requests being handled")
SIZES = mf.histogram(
    "demo_request_size_bytes", "Request sizes", labels=["method"], buckets=[100, 1000, 10000]
)
LATENCY = mf.timer("demo_request_duration_seconds", "Request latency", labels=["method"])

METHODS = ["initialize", "tools/list", "tools/call", "resources/read", "ping"]


def handle_one(rng: random.Random) -> None:
    method = rng.choice(METHODS)
    IN_FLIGHT.inc()
    try:
        with LATENCY.labels(method).time():
            time.sleep(rng.expovariate(1 / 0.004))  # the "work": about 4 ms
        SIZES.labels(method).observe(rng.randint(50, 20_000))
        status = "error" if rng.random() < 0.05 else "ok"
        REQUESTS.labels(method=method, status=status).inc()
    finally:
        IN_FLIGHT.dec()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until Ctrl-C")
    args = parser.parse_args()

    metrics = mf.configure({"port": args.port, "backends": ["prometheus"]})
    metrics.add_readiness_check("warmed_up", lambda: handled >= 10)
    url = metrics.endpoint_url
    print(f"serving {url}/metrics  {url}/health  {url}/ready   (Ctrl-C to stop)", flush=True)

    rng = random.Random(7)
    handled = 0
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    try:
        while time.monotonic() < deadline:
            handle_one(rng)
            handled += 1
            if handled % 100 == 0:
                print(f"\rhandled {handled} simulated requests", end="", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        metrics.close()
        print(f"\nstopped after {handled} requests")


if __name__ == "__main__":
    main()
