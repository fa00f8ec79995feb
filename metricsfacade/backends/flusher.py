"""The push flusher: one thread per facade hands the store's changes to every push backend.

Every ``interval`` seconds (the shortest ``flush_interval_secs`` of the push backends), on
``flush()``, at ``close()`` and at interpreter exit, the flusher takes what changed in the
store since the previous flush and has each push backend send it. Taking changes reads each
cell once, so two push backends cost no more on the record path than one. After
``os.fork()`` the child gets a thread of its own and new sockets; the store's fork hook has
already made the child's baseline its inherited values, so nothing is sent twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from metricsfacade import forking, shutdown
from metricsfacade.backends.base import PushBackend
from metricsfacade.store import SeriesStore

logger = logging.getLogger("metricsfacade")
#: how long close() lets a flush in progress go on before cutting its connections
STUCK_SECS = 1.0


class PushFlusher:
    def __init__(
        self,
        store: SeriesStore,
        backends: Sequence[PushBackend],
        *,
        fresh: bool,
    ) -> None:
        self._store = store
        self._backends = tuple(backends)
        self._interval = min(backend.flush_interval for backend in backends)
        self._closed = False
        if fresh:  # no push backend was configured: what was recorded until now is history
            store.start_push_baseline()
        self._start()
        forking.THREADS.add(self)

    def _start(self) -> None:
        self._lock = threading.Lock()  # one flush at a time: the thread, flush(), close()
        #: the thread inside flush(), which a SIGTERM handler must not wait for
        self.flushing_thread: int | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metricsfacade-push", daemon=True)
        self._thread.start()

    def use_store(self, store: SeriesStore) -> None:
        """Take changes from ``store`` from now on (its history is not sent)."""
        with self._lock:
            store.start_push_baseline()
            self._store = store

    def flush(self) -> None:
        """Send what changed since the previous flush, from the calling thread."""
        with self._lock:
            self.flushing_thread = threading.get_ident()
            try:
                changes = self._store.take_changes()
                for backend in self._backends if changes else ():
                    try:
                        backend.send(changes)
                    except Exception:  # a backend's bug must not stop the others
                        logger.exception(
                            "metricsfacade: the %s backend failed to send", backend.name
                        )
            finally:
                self.flushing_thread = None
        shutdown.resume_deferred()  # a SIGTERM that arrived during this flush goes on now

    def close(self, timeout: float) -> None:
        """Have the thread send what is left and end, giving up ``timeout`` seconds from now
        (plus one send's socket timeout): lines left then are counted as ``closing``. A last
        flush still sending after ``STUCK_SECS`` (an agent that does not read) has its
        connections cut, so close() returns soon after."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for backend in self._backends:
            backend.close_by(deadline)
        thread = self._thread
        if thread is threading.current_thread() or not thread.is_alive():
            self.flush()
            return
        self._wake.set()  # the thread flushes once more, then ends
        thread.join(min(timeout, STUCK_SECS))
        if thread.is_alive():
            for backend in self._backends:
                backend.close_by(time.monotonic())  # the rest of the flush is dropped
                backend.reconnect()
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._wake.wait(self._interval):
            self._flush_logged()
        self._flush_logged()  # closing: the last flush

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:  # the thread must outlive any failure
            logger.exception("metricsfacade: a push flush failed")

    def _after_fork_in_child(self) -> None:
        for backend in self._backends:
            backend.reconnect()  # the parent's connection is not the child's to use
        if not self._closed:
            self._start()
