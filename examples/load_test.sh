#!/usr/bin/env bash
# Load test: concurrent clients through `metricsfacade proxy` for a fixed time. Prints the
# request rate, latency percentiles of the round trips the clients timed themselves (the
# proxy's buckets start at 1 ms: too coarse for these), the proxy-added latency from /metrics,
# and checks that the proxy counted exactly the requests sent (exit 1 if not). Arguments go
# to the script: --samples FILE also writes each round trip's seconds, one a line.
#   CLIENTS=16 DURATION=30 examples/load_test.sh [--samples FILE]
set -euo pipefail
exec python3 -m metricsfacade.demo.load --clients "${CLIENTS:-8}" --duration "${DURATION:-10}" "$@"
