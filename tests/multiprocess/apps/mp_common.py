"""The facade and metrics every multi-process test app shares, configured at import.

``MP_CONFIG`` (set by the tests) picks how the multi-process directory is given:

- ``dict``: the config dict, ``{"backends": ["prometheus"], "port": None, "prometheus":
  {"multiprocess_dir": DIR}}`` (``DIR`` from ``MP_DIR``), the environment ignored;
- ``env``: ``{"backends": ["prometheus"], "port": None}``, the directory from the
  ``METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR`` variable (gunicorn's ``raw_env``, or the
  service's environment);
- ``single``: no directory at all (one process; checks the harness itself).

What each request records, so a test can compute every exposed value from the requests that
got a 200:

- ``GET /work?v=N`` (N in 0..3): ``mp_requests_total{v="N"}`` +1, then ``mp_value``
  observes ``N * 0.25`` (buckets 0.1, 0.3, 0.6, 1; sums of quarters are exact in floating
  point); answers the pid of the process that served it.
- ``GET /bump``: ``mp_max`` set to 100, ``mp_min`` to 5; answers the pid.
- ``GET /latest?v=N``: ``mp_latest{slot="a"}`` set to N (labelled: no series before);
  answers the pid.

At import: a line with the pid appended to the file ``MP_IMPORTS_LOG`` names (when set),
``mp_imports_total`` +1, ``mp_live`` (``sum``) set to 1, ``mp_max`` (``max``) to
1, ``mp_min`` (``min``) to 50 and ``mp_worker_pid`` (``worker``) to the pid.
"""

from __future__ import annotations

import os

import metricsfacade as mf

MODE = os.environ.get("MP_CONFIG", "env")
BASE = {"backends": ["prometheus"], "port": None}

if MODE == "dict":
    m = mf.Metrics({**BASE, "prometheus": {"multiprocess_dir": os.environ["MP_DIR"]}}, environ={})
elif MODE == "env":
    m = mf.Metrics(BASE)  # METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR from os.environ
elif MODE == "single":
    m = mf.Metrics(BASE, environ={})
else:
    raise RuntimeError(f"MP_CONFIG={MODE!r}: dict, env or single")

requests = m.counter("mp_requests_total", "Requests to /work", ["v"])
values = m.histogram("mp_value", "v / 4 of each request to /work", buckets=[0.1, 0.3, 0.6, 1])
imports = m.counter("mp_imports_total", "Times this app module was imported")
live = m.gauge("mp_live", "1 per process that imported the app", multiprocess_mode="sum")
highest = m.gauge("mp_max", "1 at import, 100 after /bump", multiprocess_mode="max")
lowest = m.gauge("mp_min", "50 at import, 5 after /bump", multiprocess_mode="min")
latest = m.gauge("mp_latest", "The last /latest?v= value", ["slot"], multiprocess_mode="latest")
worker_pid = m.gauge("mp_worker_pid", "The process's pid", multiprocess_mode="worker")

if "MP_IMPORTS_LOG" in os.environ:  # one line per import, for the tests to count
    with open(os.environ["MP_IMPORTS_LOG"], "a") as log:
        log.write(f"{os.getpid()}\n")
imports.inc()
live.set(1)
highest.set(1)
lowest.set(50)
worker_pid.set(os.getpid())


def handle(path: str, query: str) -> tuple[int, bytes]:
    """(status, body) for a request to ``path?query`` outside ``/metrics``."""
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if path == "/work":
        v = int(params["v"])
        requests.labels(str(v)).inc()
        values.observe(v * 0.25)
    elif path == "/bump":
        highest.set(100)
        lowest.set(5)
    elif path == "/latest":
        latest.labels("a").set(float(params["v"]))
    elif path != "/pid":
        return 404, b"not found\n"
    return 200, str(os.getpid()).encode()
