"""The backend interface: a backend reads the facade's series store; it never records.

Recording updates one cell per series in the facade's :class:`~metricsfacade.store.SeriesStore`.
A pull backend (Prometheus) reads the cells when scraped; a push backend (StatsD, Datadog)
sends what changed since its previous flush (see :class:`PushBackend`). So the record path
costs the same whatever the number of backends, and adding one costs nothing there.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

from metricsfacade.config import MetricsConfig
from metricsfacade.store import Changes, SeriesStore

#: (reason, number of lines) -> None: how a push backend reports what it could not deliver.
ReportDrop = Callable[[str, int], None]


class Backend(abc.ABC):
    """A metrics sink. Subclasses set ``name`` and read ``self.store`` once attached."""

    name: ClassVar[str]
    #: the reasons it passes to the drop reporter (the facade binds their series up front)
    drop_reasons: ClassVar[tuple[str, ...]] = ()
    #: the memory backend keeps every histogram observation for assertions
    keeps_values: ClassVar[bool] = False

    store: SeriesStore

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: MetricsConfig) -> Backend:
        """Build the backend from the whole configuration (it reads its own table)."""

    def attach(self, store: SeriesStore) -> None:
        """Called once by the facade before the backend is used: the store it reads."""
        self.store = store

    def set_drop_reporter(self, report_drop: ReportDrop) -> None:  # noqa: B027 - optional hook
        """The facade passes a function counting undeliverable lines; push backends call it
        (never while holding a lock of theirs: it records a metric)."""

    def set_collect_hook(self, hook: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Pull backends call ``hook`` before each collection so pulled values are fresh."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and registrations. Called once by the facade."""


class PushBackend(Backend):
    """A backend that sends the store's changes to an agent. The facade's flusher calls
    :meth:`send` from one thread at a time, every ``flush_interval`` seconds, on ``flush()``,
    at ``close()`` and at interpreter exit."""

    #: seconds between two flushes; push backends configured together flush at the shortest
    flush_interval: float

    @abc.abstractmethod
    def send(self, changes: Changes) -> None:
        """Send one flush's changes; count what cannot be delivered, never raise for it."""

    def reconnect(self) -> None:
        """Drop the connection: the next send opens a new one (after a fork, or to wake a
        send stuck on a peer that stopped reading)."""

    def close_by(self, deadline: float) -> None:
        """Sending stops at ``deadline`` (``time.monotonic()``): what is left is counted."""
