"""Flush push backends when SIGTERM stops the process, then die of SIGTERM as usual.

systemd, Kubernetes, Docker and ``kill`` stop a process with SIGTERM, whose default action
ends it without running ``atexit`` hooks: whatever the StatsD and Datadog backends had queued
would be lost. Configuring a facade (with ``handle_sigterm``, the default) installs, once per
process and only from the main thread, a handler that flushes every watched facade, waiting
at most :data:`FLUSH_TIMEOUT_SECS` in all, and then:

- if SIGTERM had its default action: restores it and sends SIGTERM to the process again, so
  it dies of the signal (exit status -15 to ``subprocess``, 143 in a shell), as before, and
  a second SIGTERM during the flush kills at once;
- if the application had installed a handler: calls that handler (chaining);
- if SIGTERM was ignored (``SIG_IGN``) or handled outside Python: nothing is installed.

A handler the application installs later replaces this one: it should end with
``sys.exit()``, so that the ``atexit`` hook closes (and flushes) the facades. Configuring in a
thread other than the main one installs nothing (Python allows signal handlers only there); a
later ``configure()`` from the main thread does. Closing every facade leaves the handler in
place: it then flushes nothing and acts as before, and restoring the previous handler could
undo one the application installed since. A facade configured with ``handle_sigterm = false``
installs nothing and is not flushed by the handler.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metricsfacade.facade import Metrics

logger = logging.getLogger("metricsfacade")

#: The longest the handler waits for the flushes of all facades together.
FLUSH_TIMEOUT_SECS = 3.0

Handler = Callable[[int, FrameType | None], Any]


class _SigtermFlush:
    """The process-wide handler: the facades to flush and the handler it took over from."""

    def __init__(self) -> None:
        self.watched: weakref.WeakSet[Metrics] = weakref.WeakSet()
        self.installed = False
        self.previous: Handler | None = None  # None: SIGTERM had its default action
        #: a SIGTERM that arrived while the main thread was flushing, handled after it
        self.deferred: tuple[int, FrameType | None] | None = None

    def install(self) -> None:
        """Take over SIGTERM once, unless it is ignored or out of reach."""
        if self.installed:
            return
        current = signal.getsignal(signal.SIGTERM)
        if current != signal.SIG_DFL and not callable(current):
            return  # SIG_IGN: ignored on purpose; None: handled by C code we cannot chain to
        try:
            signal.signal(signal.SIGTERM, self.handle)
        except ValueError:  # not the main thread (of the main interpreter)
            logger.debug("metricsfacade: no SIGTERM handler outside the main thread")
            return
        self.installed = True
        self.previous = current if callable(current) else None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Flush, then die of SIGTERM or pass it on to the application's handler.

        When the signal interrupts a flush running in this (the main) thread, that flush
        holds what it took from the store: the handler defers to it, and the flush calls
        :func:`resume_deferred` when done.
        """
        me = threading.get_ident()
        if any(facade.flushing_thread() == me for facade in self.watched):
            self.deferred = (signum, frame)
            return
        previous = self.previous
        if previous is None:  # a second SIGTERM during the flush kills at once, as usual
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        flush_all(list(self.watched), FLUSH_TIMEOUT_SECS)
        if previous is None:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            previous(signum, frame)


_STATE = _SigtermFlush()


def resume_deferred() -> None:
    """Called after every flush: handle a SIGTERM that arrived during it, in this thread."""
    deferred = _STATE.deferred
    if deferred is not None and threading.get_ident() == threading.main_thread().ident:
        _STATE.deferred = None
        _STATE.handle(*deferred)


def watch(facade: Metrics) -> None:
    """Called by ``configure()``: flush ``facade`` on SIGTERM if its config asks for it."""
    config = facade.config
    if config is None or not config.handle_sigterm:
        _STATE.watched.discard(facade)
        return
    _STATE.watched.add(facade)
    _STATE.install()


def flush_all(facades: list[Metrics], timeout: float) -> None:
    """Flush every facade on a helper thread of its own, waiting ``timeout`` s at most.

    A signal handler runs in the main thread between two bytecodes, possibly while that
    thread holds a lock a flush needs (a buffer's send lock, a logging handler's lock):
    flushing inline could wait forever. A helper blocked that way is abandoned at the
    deadline. Helpers are started with ``_thread``, not ``threading.Thread``, whose ``start()``
    takes a module lock the interrupted thread may hold and waits, unbounded, for the thread
    to announce itself.
    """
    deadline = time.monotonic() + timeout
    done = [_flush_in_helper(facade) for facade in facades]
    for lock in done:
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            logger.warning("metricsfacade: SIGTERM flush still running after %g s", timeout)
            return


def _flush_in_helper(facade: Metrics) -> _thread.LockType:
    """Start ``facade.flush()`` on a new thread; the returned lock is released when it ends."""
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            facade.flush()
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    return done
