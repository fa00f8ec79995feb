"""Where the bench's processes run: the same placement for every path, CPUs kept awake.

Linux only (``sched_setaffinity`` and ``/proc``); elsewhere the bench runs unpinned.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Pins a path's process (a proxy with its server, or a server) given the two CPUs.
Placement = Callable[[int, bool, tuple[int, int]], None]


def two_cpus() -> tuple[int, int] | None:
    """The CPU for the client and the servers, and the one for the proxies."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return (available[0], available[1]) if len(available) >= 2 else None


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as handle:
                children += [int(child) for child in handle.read().split()]
        except OSError:
            continue
    return children


def _pin(pid: int, cpu: int) -> None:
    """Every thread of the process onto one CPU (a process it starts later inherits it)."""
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:  # the thread ended meanwhile
            continue


def proxies_apart(pid: int, is_proxy: bool, cpus: tuple[int, int]) -> None:
    """For comparing proxies: client and servers on the first CPU, the proxies alone on the
    second, so no proxy's work competes with a server's."""
    client_cpu, proxy_cpu = cpus
    if not is_proxy:
        _pin(pid, client_cpu)
        return
    _pin(pid, proxy_cpu)
    for server in _children(pid):
        _pin(server, client_cpu)


def client_apart(pid: int, is_proxy: bool, cpus: tuple[int, int]) -> None:
    """For the proxy's own overhead: the client alone on the first CPU, a server (and the
    proxy in front of it) on the second, so that direct and proxied messages cross between
    the client and the rest alike, and the proxy adds only its own hop."""
    _pin(pid, cpus[1])
    for child in _children(pid):
        _pin(child, cpus[1])


#: Keeps a CPU out of its idle states, yet yields it to any other process at once.
SPINNER = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile 1: pass"


@contextmanager
def kept_awake(cpus: tuple[int, int] | None) -> Iterator[None]:
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for cpu in cpus or ():
            spinners.append(subprocess.Popen([sys.executable, "-c", SPINNER]))
            _pin(spinners[-1].pid, cpu)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextmanager
def client_on(cpu: int | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
