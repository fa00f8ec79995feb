"""Gauge modes of multi-process Prometheus metrics, end to end: a WSGI app on 3 gunicorn sync
workers (``apps/mp_common.py``), whose every worker sets at import ``mp_live`` (``sum``) to
1, ``mp_max`` (``max``) to 1, ``mp_min`` (``min``) to 50 and ``mp_worker_pid``
(``worker``) to its pid; ``/bump`` sets ``mp_max`` to 100 and ``mp_min`` to 5 in the worker
that serves it, ``/latest?v=N`` sets ``mp_latest{slot="a"}`` (``latest``) to N.

Only live workers count: once the worker that served ``/bump`` is SIGKILLed (and gunicorn
has started another), ``mp_max`` is back to 1, ``mp_min`` to 50, ``mp_live`` is 3 again,
``mp_worker_pid`` has one series per live worker and none for the dead one, and
``mp_latest`` is the last value a live worker wrote; once gunicorn is told to run one
worker fewer (SIGTTOU), the same holds for the 2 left.

Set-up: ``m.gauge(name, help, labels, multiprocess_mode="sum"|"max"|"min"|"latest"|
"worker")`` (default ``"sum"``; ``"worker"`` adds a ``worker="<pid>"`` label), and the
directory, here in gunicorn's config file::

    raw_env = ["METRICSFACADE_PROMETHEUS__MULTIPROCESS_DIR=/run/myapp/metrics"]
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

from mp_checks import Service, Snapshot
from support import eventually, require_module, servers

require_module("gunicorn")
require_module("werkzeug")
require_module("prometheus_client")

Serve = Callable[..., Service]

SETUP = servers.Setup("gauges", "gunicorn", "mp_wsgi:app", 3)


@dataclass(frozen=True)
class Gauges:
    live: float | None
    max: float | None
    min: float | None
    latest: float | None
    #: mp_worker_pid by its ``worker`` label
    workers: dict[str, float]

    @classmethod
    def of(cls, snapshot: Snapshot) -> Gauges:
        workers = {}
        for labels, value in snapshot.series("mp_worker_pid").items():
            assert set(dict(labels)) == {"worker"}, f"mp_worker_pid labels {dict(labels)}"
            workers[dict(labels)["worker"]] = value
        return cls(
            snapshot.value("mp_live"),
            snapshot.value("mp_max"),
            snapshot.value("mp_min"),
            snapshot.value("mp_latest", slot="a"),
            workers,
        )


def expected(pids: set[int], writes: list[tuple[int, float]]) -> Gauges:
    """The gauges when the live workers are ``pids``, none bumped, and ``writes`` were the
    ``(pid, v)`` of the ``/latest`` requests, in order (the last by a live worker wins)."""
    latest = next((v for pid, v in reversed(writes) if pid in pids), None)
    return Gauges(float(len(pids)), 1.0, 50.0, latest, {str(pid): float(pid) for pid in pids})


def settle(service: Service, writes: list[tuple[int, float]]) -> set[int]:
    """Scrape until the gauges are :func:`expected` for the live workers (each new worker
    sets its gauges as it imports the app); returns the live workers."""
    last: list[tuple[set[int], Gauges]] = []

    def settled() -> set[int]:
        pids = service.server.workers()
        gauges = Gauges.of(service.snapshot())
        last.append((pids, gauges))
        same = pids == service.server.workers()
        return pids if same and gauges == expected(pids, writes) else set()

    return eventually(
        settled,
        20,
        0.05,
        message=lambda: (
            f"live workers {sorted(last[-1][0])}, gauges {last[-1][1]}; "
            f"wanted {expected(last[-1][0], writes)}"
        ),
    )


def test_gauges_merge_the_live_workers_by_mode(serve: Serve) -> None:
    service = serve(SETUP, "env")
    pids = settle(service, [])
    assert len(pids) == 3

    status, body = service.get("/bump")
    assert status == 200
    victim = int(body)
    bumped = Gauges.of(service.snapshot())
    assert (bumped.max, bumped.min, bumped.live) == (100.0, 5.0, 3.0), bumped

    # latest: the value written last, whichever worker wrote it. The values go down, so the
    # last one is neither the largest nor the first. Sent until two workers have answered.
    writes: list[tuple[int, float]] = []
    for v in range(90, 30, -1):
        status, body = service.get(f"/latest?v={v}")
        assert status == 200
        writes.append((int(body), float(v)))
        if len({pid for pid, _ in writes}) >= 2 and len(writes) >= 5:
            break
    assert len({pid for pid, _ in writes}) >= 2, f"every /latest went to one worker: {writes}"
    assert Gauges.of(service.snapshot()).latest == writes[-1][1]

    # SIGKILL the worker that served /bump: its gauges go with it, from the very next
    # scrape on (its replacement may still be starting: it would add 1, 1, 50).
    assert servers.kill_and_wait(victim)
    killed = Gauges.of(service.snapshot())
    assert str(victim) not in killed.workers, killed
    assert (killed.max, killed.min) == (1.0, 50.0), killed
    assert killed.live in (2.0, 3.0), killed
    service.server.wait_workers(3, exclude=[victim])
    assert victim not in settle(service, writes)

    # One worker fewer: the one gunicorn stops (gracefully) is not counted either, from the
    # first scrape after it is gone.
    service.server.signal(signal.SIGTTOU)
    remaining = service.server.wait_workers(2)
    fewer = service.snapshot()
    assert Gauges.of(fewer) == expected(remaining, writes)
    assert len([name for name in fewer.files if name.endswith(".mfw")]) == 2, fewer.files
