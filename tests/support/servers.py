"""Real multi-process web servers for tests: a server (gunicorn, ``uvicorn --workers``) run on
a socket the test already listens on, its process tree read from ``/proc``, HTTP load from
threads that can be paused (so a worker is killed with no request in flight), a sampler that
scrapes on a thread, and queries of a real Prometheus server (started by
:func:`support.sinks.start_prometheus`).

Standard library only. Every wait polls with :func:`support.eventually`; every process
started here is stopped by :meth:`Server.stop` (the fixtures call it), workers a dead master
left behind included (by pid and start time, so a reused pid is never signalled).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from support import eventually, http_get, sinks

T = TypeVar("T")

#: How long a server may take to answer its first request (imports on a loaded machine).
START_TIMEOUT_SECS = 30.0
#: How long an HTTP request of the load may wait: requests queue while every worker
#: restarts, and a request that timed out here but was served later would be counted by the
#: server and not by the client.
REQUEST_TIMEOUT_SECS = 30.0


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    state: str  # "R", "S", "Z" (zombie: dead, not yet reaped)...
    start_ticks: int  # start time since boot, in clock ticks: (pid, start) names one process


def proc_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(pid, int(fields[1]), fields[0], int(fields[19]))


def all_processes() -> list[ProcStat]:
    stats = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                stats.append(stat)
    return stats


def children(pid: int) -> set[int]:
    """The live (running, not zombie) children of ``pid``."""
    return {s.pid for s in all_processes() if s.ppid == pid and s.state != "Z"}


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


#: Children of a server that are not workers: the resource tracker multiprocessing starts
#: beside the processes it spawns (``uvicorn --workers``).
HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is dead: it only waits to be reaped)."""
    stat = proc_stat(pid)
    return stat is not None and stat.state != "Z"


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port and listening: handed to a server
    (``--bind fd://N``, ``--fd N``), so no other process can take the port meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


class Server:
    """A server process (the master / supervisor) started by :func:`start_server`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.master = process.pid
        #: every child seen, (pid, start ticks), so stop() can reap what the master left
        self._seen: set[tuple[int, int]] = set()
        self._helpers: set[int] = set()

    def workers(self) -> set[int]:
        """The master's live children now, except :data:`HELPERS`."""
        pids = set()
        for pid in children(self.master):
            stat = proc_stat(pid)
            if stat is not None:
                self._seen.add((pid, stat.start_ticks))
            if pid not in self._helpers and not any(h in cmdline(pid) for h in HELPERS):
                pids.add(pid)
            else:
                self._helpers.add(pid)
        return pids

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return sinks.log_tail(self.log_path, lines)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def wait_serving(self, path: str, timeout: float = START_TIMEOUT_SECS) -> None:
        """Until ``GET path`` answers 200."""

        def serving() -> bool:
            self.check_running()
            try:
                return http_get(f"{self.url}{path}", timeout=2.0)[0] == 200
            except OSError:
                return False

        eventually(
            serving,
            timeout,
            0.05,
            message=lambda: f"{self.url}{path} not served:\n{self.log_tail()}",
        )

    def wait_workers(
        self, count: int, timeout: float = START_TIMEOUT_SECS, exclude: Sequence[int] = ()
    ) -> set[int]:
        """Until exactly ``count`` children run, none of them in ``exclude``; returns them."""

        def settled() -> set[int]:
            self.check_running()
            pids = self.workers()
            return pids if len(pids) == count and not pids & set(exclude) else set()

        return eventually(
            settled,
            timeout,
            0.05,
            message=lambda: f"{count} workers (not {list(exclude)}); log:\n{self.log_tail()}",
        )

    def signal(self, signum: int) -> None:
        self.check_running()
        os.kill(self.master, signum)

    def stop(self) -> None:
        """SIGTERM the master and wait (SIGKILL after 10 s); then SIGKILL any child it left."""
        if self.process.poll() is None:
            self.workers()
        sinks.stop_process(self.process)
        for pid, start in sorted(self._seen):
            stat = proc_stat(pid)
            if stat is not None and stat.start_ticks == start and stat.state != "Z":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_server(
    command: Sequence[str],
    sock: socket.socket,
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
) -> Server:
    """Start ``command`` (which names ``sock.fileno()`` as its listening socket) and close
    this process's copy of the socket, so connections only ever wait for the server."""
    port = int(sock.getsockname()[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    sock.close()
    return Server(process, port, log_path)


def kill_and_wait(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL ``pid`` and wait until it is dead (a zombie counts: its files are closed).
    False when it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    eventually(lambda: not alive(pid), timeout, 0.01, message=f"pid {pid} survived SIGKILL")
    return True


# -- gunicorn and uvicorn --workers ------------------------------------------------------------


def uvicorn_worker_class() -> str:
    """gunicorn's worker class for ASGI apps: the ``uvicorn-worker`` package's where it is
    installed, else the one uvicorn itself still ships (deprecated, same code)."""
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    return "uvicorn.workers.UvicornWorker"


@dataclass(frozen=True)
class Setup:
    """How to serve an app with several worker processes.

    ``server``: ``"gunicorn"`` (``worker_class`` ``"sync"`` or :func:`uvicorn_worker_class`,
    ``preload``) or ``"uvicorn"`` (``uvicorn --workers``, fresh interpreters spawned by its
    supervisor, never preloaded). ``max_requests``: a worker exits after that many requests
    (plus up to ``jitter``) and the master starts another; 0: never."""

    name: str
    server: str
    app: str  # "module:attribute"
    workers: int
    worker_class: str = "sync"
    preload: bool = False
    max_requests: int = 0
    jitter: int = 0

    def gunicorn_config(self, raw_env: Mapping[str, str]) -> str:
        """The gunicorn config file (Python) for this setup."""
        lines = [
            f"workers = {self.workers}",
            f"worker_class = {self.worker_class!r}",
            f"preload_app = {self.preload}",
            f"max_requests = {self.max_requests}",
            f"max_requests_jitter = {self.jitter}",
            "graceful_timeout = 10",
            # gunicorn >= 24 opens a control socket at one path per user: servers of tests
            # running at once would fight over it (older versions ignore the setting).
            "control_socket_disable = True",
            f"raw_env = {[f'{key}={value}' for key, value in raw_env.items()]!r}",
        ]
        return "\n".join(lines) + "\n"

    def command(self, fd: int, directory: Path, raw_env: Mapping[str, str]) -> list[str]:
        """The command line serving on the listening socket ``fd``; gunicorn's config file is
        written to ``directory``; ``raw_env``: gunicorn's ``raw_env`` (gunicorn only)."""
        if self.server == "gunicorn":
            config = directory / "gunicorn.conf.py"
            config.write_text(self.gunicorn_config(raw_env))
            bind = f"fd://{fd}"
            return [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", bind, self.app]
        if self.server != "uvicorn" or raw_env or self.preload:
            raise ValueError(f"uvicorn --workers takes no raw_env and cannot preload: {self}")
        command = [sys.executable, "-m", "uvicorn", self.app, "--fd", str(fd)]
        command += ["--workers", str(self.workers), "--no-access-log"]
        if self.max_requests:
            command += ["--limit-max-requests", str(self.max_requests)]
            command += ["--limit-max-requests-jitter", str(self.jitter)]
        return command


def launch(
    setup: Setup,
    directory: Path,
    env: Mapping[str, str],
    raw_env: Mapping[str, str] | None = None,
) -> Server:
    """Start ``setup`` on a new listening socket, with ``env`` as its environment, its log
    (and gunicorn's config file) in ``directory``. Returns at once: see
    :meth:`Server.wait_serving`."""
    sock = listening_socket()
    command = setup.command(sock.fileno(), directory, raw_env or {})
    return start_server(
        command, sock, cwd=directory, env=env, log_path=directory / f"{setup.name}.log"
    )


# -- HTTP load that can be paused --------------------------------------------------------------


@dataclass
class Response:
    index: int
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    body: bytes
    error: str = ""
    finished: float = 0.0  # time.monotonic()


@dataclass
class Load:
    """``total`` GET requests, ``url_for(index)``, from ``threads`` threads, each on a fresh
    connection (urllib sends ``Connection: close``). :meth:`pause` returns once no request
    is in flight, so what a process does meanwhile (SIGKILL) can hit no request halfway."""

    url_for: Callable[[int], str]
    total: int
    threads: int = 2
    responses: list[Response] = field(default_factory=list)
    _next: int = 0
    _in_flight: int = 0
    _paused: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: not self._paused)
                if self._next >= self.total:
                    return
                index = self._next
                self._next += 1
                self._in_flight += 1
            try:
                status, _, body = http_get(self.url_for(index), timeout=REQUEST_TIMEOUT_SECS)
                response = Response(index, status, body)
            except OSError as exc:  # refused, reset, timed out: no answer
                response = Response(index, 0, b"", repr(exc))
            response.finished = time.monotonic()
            with self._cond:
                self._in_flight -= 1
                self.responses.append(response)
                self._cond.notify_all()

    def done(self) -> int:
        with self._cond:
            return len(self.responses)

    def wait_done(self, count: int, timeout: float) -> None:
        """Until ``count`` requests have an outcome."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.responses) >= count, timeout):
                raise AssertionError(
                    f"{len(self.responses)} of {count} requests done in {timeout} s"
                )

    def pause(self, timeout: float = REQUEST_TIMEOUT_SECS + 5) -> list[Response]:
        """Stop starting requests and wait until none is in flight; the responses so far."""
        with self._cond:
            self._paused = True
            if not self._cond.wait_for(lambda: self._in_flight == 0, timeout):
                raise AssertionError(
                    f"{self._in_flight} requests still in flight after {timeout} s"
                )
            return list(self.responses)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def join(self, timeout: float) -> list[Response]:
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._workers):
            raise AssertionError(f"the load did not finish in {timeout} s ({self.done()} done)")
        return list(self.responses)


# -- a sampler thread --------------------------------------------------------------------------


@dataclass
class Sampler(Generic[T]):
    """Calls ``sample()`` every ``interval`` s on a thread until :meth:`stop`; keeps what it
    returned, and the exceptions it raised, in order."""

    sample: Callable[[], T]
    interval: float = 0.05
    samples: list[T] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler[T]:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # kept for the test to judge
                self.errors.append(exc)
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 30.0) -> list[T]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"the sampler did not stop in {timeout} s")
        return list(self.samples)


# -- a Prometheus server with a chosen scrape interval -----------------------------------------


def query_value(server: sinks.PrometheusServer, promql: str) -> float | None:
    """The single value of ``promql`` now, or None when it has no sample."""
    result = server.query_once(promql)
    if not result:
        return None
    return sinks.single_value(result, promql)
