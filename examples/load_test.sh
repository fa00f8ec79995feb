#!/usr/bin/env bash
# Load test (the brief's script, made real): concurrent clients through `metricsfacade proxy`
# for a fixed time, then /metrics read back: request rate, latency quantiles, proxy-added
# latency, and a check that the proxy counted exactly the requests sent (exit 1 if not).
#   CLIENTS=16 DURATION=30 examples/load_test.sh
set -euo pipefail
exec python3 -m metricsfacade.demo.load --clients "${CLIENTS:-8}" --duration "${DURATION:-10}"
