"""What a forked child must make anew: first every lock, then every thread.

``os.fork()`` copies locks in whatever state they were, including held by a parent thread
that does not exist in the child, and copies no thread but the caller. Objects register
here and have ``_after_fork_in_child()`` called in the child: those in :data:`LOCKS`
first, then those in :data:`THREADS` (hooks run in the order they were registered), so a
restarted thread never meets a lock the parent left held.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class AfterFork(Protocol):
    def _after_fork_in_child(self) -> None: ...


class ForkHooks:
    """Live objects (weakly held) to call in a forked child, with one hook registered once."""

    def __init__(self) -> None:
        self._objects: weakref.WeakSet[AfterFork] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._run)

    def add(self, obj: AfterFork) -> None:
        self._objects.add(obj)

    def _run(self) -> None:
        for obj in list(self._objects):
            obj._after_fork_in_child()


#: objects whose locks a parent thread may have held when the process forked
LOCKS = ForkHooks()
#: objects whose threads exist only in the parent; called once every lock is new
THREADS = ForkHooks()
