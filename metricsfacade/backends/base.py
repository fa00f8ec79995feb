"""The backend interface: a backend reads the facade's series store; it never records.

Recording updates one cell per series in the facade's :class:`~metricsfacade.store.SeriesStore`.
A pull backend (Prometheus) reads the cells when scraped; a push backend (StatsD, Datadog)
sends what changed since its previous flush (see :class:`PushBackend`). So the record path
costs the same whatever the number of backends, and adding one costs nothing there.
"""

from __future__ import annotations

import abc
import importlib
import socket
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar

from metricsfacade.errors import MissingExtraError
from metricsfacade.store import Changes, SeriesStore

#: (reason, number of lines) -> None: how a push backend reports what it could not deliver.
ReportDrop = Callable[[str, int], None]


#: (body, content type): what a pull backend serves at the endpoint's path.
Exposition = tuple[bytes, str]


class Backend(abc.ABC):
    """A metrics sink. Subclasses set ``name`` and read ``self.store`` once attached.

    A backend is found by ``name`` in the ``metricsfacade.backends`` entry-point group or by
    class path (see ``metricsfacade.plugins``). Its module must import without its
    third-party library: import that in :meth:`build` with :meth:`library`, so a
    missing extra is a one-line error when the backend is configured, and config tables
    still parse.
    """

    name: ClassVar[str]
    #: the attrs class of its ``[name]`` config table (fields made with
    #: ``metricsfacade.settings.setting``), or None when it takes no settings
    Settings: ClassVar[type[Any] | None] = None
    #: a pull backend serves :meth:`render` at the endpoint's path
    pull: ClassVar[bool] = False
    #: the third-party module it needs and the extra that installs it, if any
    needs: ClassVar[tuple[str, str] | None] = None
    #: the reasons it passes to the drop reporter (the facade binds their series up front)
    drop_reasons: ClassVar[tuple[str, ...]] = ()
    #: the memory backend keeps every histogram observation for assertions
    keeps_values: ClassVar[bool] = False

    store: SeriesStore

    @classmethod
    @abc.abstractmethod
    def build(cls, settings: Any, common_labels: Mapping[str, str]) -> Backend:
        """Build the backend from its own table (an instance of ``Settings``, or None) and
        the labels every series carries."""

    @classmethod
    def library(cls, module: str) -> ModuleType:
        """Import ``module`` (of the library in ``needs``), or raise MissingExtraError
        naming the extra that installs it."""
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if cls.needs is not None and missing == cls.needs[0]:
                raise MissingExtraError(cls.name, missing, cls.needs[1]) from exc
            raise

    @classmethod
    def require(cls) -> None:
        """Raise MissingExtraError now if the library this backend needs is missing."""
        if cls.needs is not None:
            cls.library(cls.needs[0])

    @classmethod
    def refreshed_by_scrapes(cls, settings: Any) -> bool:
        """Whether the facade's collect hooks, run before each scrape of this process,
        keep fresh every value this backend reads. When not, collectors (the system
        collector) refresh their values on a thread of their own."""
        return True

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the metrics go, for people: ``udp://127.0.0.1:8125``, ``in-process``."""

    def probe(self) -> str | None:
        """Why the target cannot be reached, found without sending it anything (a host
        name that does not resolve), or None."""
        return None

    def render(self, accept: str | None) -> Exposition:
        """What a pull backend serves, in the format the Accept header asks for."""
        raise NotImplementedError(f"the {self.name} backend is not a pull backend")

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
    #: sends are UDP datagrams: an absent agent's refusal is only heard by the next send
    over_udp: bool = False

    @classmethod
    def refreshed_by_scrapes(cls, settings: Any) -> bool:
        return False  # nothing scrapes it: values are read at each flush

    @abc.abstractmethod
    def send(self, changes: Changes) -> None:
        """Send one flush's changes; count what cannot be delivered, never raise for it."""

    def reconnect(self) -> None:
        """Drop the connection: the next send opens a new one (after a fork, or to wake a
        send stuck on a peer that stopped reading)."""

    def close_by(self, deadline: float) -> None:
        """Sending stops at ``deadline`` (``time.monotonic()``): what is left is counted."""


def unresolvable(host: str, port: int) -> str | None:
    """Why ``host`` does not resolve (nothing is sent), or None."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        return str(exc)
    return None
