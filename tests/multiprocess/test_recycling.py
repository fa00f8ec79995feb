"""Multi-process Prometheus metrics under worker recycling and crashes, in real servers.

Each setup serves ``apps/`` (a WSGI or a Starlette app recording a labelled counter and a
histogram per request, with the facade's app mounted at ``/metrics``) from several worker
processes that recycle every ~25 requests. Two client threads send 800 requests (fresh
connection each); twice, with no request in flight, the worker that served the last one is
SIGKILLed. Meanwhile a thread scrapes ``/metrics/`` (served by whichever worker the kernel
picks) and lists the metric files. Then the master restarts every worker (SIGHUP).

Proved for every setup:

- no scrape ever shows a counter, a histogram bucket, ``_count`` or ``_sum`` lower than an
  earlier scrape did (dead workers' values are kept, never counted twice);
- every scrape has ``+Inf`` bucket == ``_count``;
- at every scrape, ``*.mfw`` + ``*.mfa`` files <= processes alive around it + 1;
- after the run, the exposition holds exactly what the requests that got a 200 imply
  (counter by label, ``_count``, ``_sum``, each bucket), and still does once every worker
  was replaced; then there is one ``*.mfw`` per recording process and one archive;
- ``mp_imports_total`` (+1 when a process imports the app) equals the imports the app
  logged, 1 with ``--preload`` (forked workers do not copy the master's count).

Set-up each server needs (the directory is created if missing; no server hook is needed:
files of dead workers are found with ``flock`` and compacted at scrape time):

gunicorn, sync or uvicorn workers, ``gunicorn -c gunicorn.conf.py app:app``::

    # gunicorn.conf.py
    workers = 3
    worker_class = "sync"            # or "uvicorn_worker.UvicornWorker"
    preload_app = False              # True works too
    max_requests = 25                # optional recycling
    max_requests_jitter = 5
    raw_env = ["METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR=/run/myapp/metrics"]

or, instead of ``raw_env``, the config dict in the app::

    m = mf.configure({"backends": ["prometheus"], "port": None,
                      "prometheus": {"multiprocess_dir": "/run/myapp/metrics"}})

``uvicorn --workers`` (fresh interpreters; recycling with ``--limit-max-requests``)::

    METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR=/run/myapp/metrics \\
        uvicorn app:app --workers 2 --limit-max-requests 25 --limit-max-requests-jitter 5

and in every case mount the exposition in the app: ``app.mount("/metrics", m.asgi_app())``
or ``DispatcherMiddleware(app, {"/metrics": m.wsgi_app()})`` (docs/web.md).
"""

from __future__ import annotations

import http.client
import signal
import time
from collections.abc import Callable

import pytest
from mp_checks import Expected, Service, Snapshot, run_load_with_kills
from support import eventually, require_module, servers

require_module("gunicorn")
require_module("uvicorn")
require_module("starlette")
require_module("werkzeug")
require_module("prometheus_client")

Serve = Callable[..., Service]

REQUESTS = 800
KILLS = 2
UVICORN_WORKER = servers.uvicorn_worker_class()

SETUPS = {
    setup.name: (setup, config)
    for setup, config in [
        (servers.Setup("gunicorn-sync", "gunicorn", "mp_wsgi:app", 3, max_requests=25), "dict"),
        (
            servers.Setup(
                "gunicorn-sync-preload", "gunicorn", "mp_wsgi:app", 3, preload=True, max_requests=25
            ),
            "dict",
        ),
        (
            servers.Setup(
                "gunicorn-uvicorn-worker",
                "gunicorn",
                "mp_asgi:app",
                3,
                worker_class=UVICORN_WORKER,
                max_requests=25,
                jitter=5,
            ),
            "env",
        ),
        (
            servers.Setup(
                "gunicorn-uvicorn-worker-preload",
                "gunicorn",
                "mp_asgi:app",
                3,
                worker_class=UVICORN_WORKER,
                preload=True,
                max_requests=25,
                jitter=5,
            ),
            "env",
        ),
        (
            servers.Setup(
                "uvicorn-workers", "uvicorn", "mp_asgi:app", 2, max_requests=80, jitter=10
            ),
            "env",
        ),
    ]
}


def check_scrapes(snapshots: list[Snapshot], errors: list[Exception]) -> None:
    assert len(snapshots) >= 20, f"only {len(snapshots)} scrapes; errors: {errors[:5]}"
    # No answer, or half of one (OSError, IncompleteRead), is the only acceptable failure: a
    # scrape in flight on a worker that is SIGKILLed, or whose connection a recycling uvicorn
    # closes. Rare.
    failed = [exc for exc in errors if not isinstance(exc, OSError | http.client.IncompleteRead)]
    assert not failed, f"scrapes failed: {failed[:5]!r}"
    assert len(errors) <= max(KILLS * 2, len(snapshots) // 20), errors[:10]
    problems = []
    for n, snapshot in enumerate(snapshots):
        problems += [f"scrape {n}: {p}" for p in snapshot.histogram_problems()]
        if bound := snapshot.file_bound_problem():
            problems.append(f"scrape {n}: {bound}")
        if n:
            problems += [f"scrape {n}: {p}" for p in snapshot.monotonic_problems(snapshots[n - 1])]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_counts_survive_recycling_and_sigkill(serve: Serve, name: str) -> None:
    setup, config = SETUPS[name]
    service = serve(setup, config)
    assert service.metrics_dir.is_dir(), "the facade did not create its multi-process directory"

    sampler = servers.Sampler(service.snapshot, interval=0.01).start()
    started = time.monotonic()
    try:
        values, victims = run_load_with_kills(service, REQUESTS, KILLS)
    finally:
        snapshots = sampler.stop()
    elapsed = time.monotonic() - started
    expected = Expected.of(values)

    check_scrapes(snapshots, sampler.errors)
    final = service.snapshot()
    assert not (problems := expected.problems(final)), (
        f"after {len(values)} requests answered 200 in {elapsed:.1f} s, killed {victims}: "
        f"{problems}\nfiles: {final.files}\n{final.text}"
    )
    assert not final.file_bound_problem(), final.file_bound_problem()
    assert not final.monotonic_problems(snapshots[-1])

    # Every worker replaced: all of them are dead workers now, archived.
    old = service.server.workers()
    service.server.signal(signal.SIGHUP)
    service.server.wait_workers(setup.workers, exclude=sorted(old))

    def settled() -> Snapshot | None:
        """A scrape after which there is one file per recording process, and the archive
        (scrapes are requests too: a worker may recycle meanwhile)."""
        snapshot = service.snapshot()
        live_files = [f for f in snapshot.files if f.endswith(".mfw")]
        archives = [f for f in snapshot.files if f.endswith(".mfa")]
        if len(live_files) == len(service.processes()) and len(archives) == 1:
            return snapshot
        return None

    after = eventually(
        settled,
        30,
        0.1,
        message=lambda: (
            f"wanted one *.mfw per process {sorted(service.processes())} and 1 *.mfa, "
            f"have {service.snapshot().files}"
        ),
    )
    assert not (problems := expected.problems(after)), f"after SIGHUP: {problems}\n{after.text}"
    assert not after.monotonic_problems(final)
    # Each import counted once: with --preload only the master imported, and the workers it
    # forked did not copy its count into their own files.
    if setup.preload:
        assert service.imports() == 1
    eventually(
        lambda: service.snapshot().value("mp_imports_total") == service.imports(),
        15,
        0.1,
        message=lambda: (
            f"mp_imports_total {service.snapshot().value('mp_imports_total')}, "
            f"imports {service.imports()}"
        ),
    )
