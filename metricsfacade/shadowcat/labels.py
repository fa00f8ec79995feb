"""Bounding label values that come from the network (methods, clients).

A client must not be able to grow the series count by inventing method names or client ids:
the first ``limit`` distinct accepted values keep their name, everything else is ``other``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

OTHER = "other"


class BoundedValues:
    """Maps a value to itself while it is accepted and among the first ``limit`` distinct
    accepted values, else to ``other``; values in ``always`` (a fixed, finite set) keep their
    name whatever the count. The hit path is one dict lookup."""

    def __init__(
        self,
        limit: int,
        accept: Callable[[str], bool] | None = None,
        always: frozenset[str] = frozenset(),
    ) -> None:
        self._limit = limit
        self._accept = accept or (lambda value: True)
        self._known: dict[object, str] = {value: value for value in always}
        self._admitted = 0  # values admitted under the limit (not the ``always`` ones)
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        known = self._known.get(value)
        if known is not None:
            return known
        return self._admit(value)

    def _admit(self, value: object) -> str:
        text = value if isinstance(value, str) else str(value)
        with self._lock:
            if text in self._known:
                return self._known[text]
            if self._admitted >= self._limit or not self._accept(text):
                return OTHER  # never stored: memory stays bounded
            self._admitted += 1
            self._known[text] = text
            return text


def method_matcher(patterns: Iterable[str]) -> tuple[frozenset[str], Callable[[str], bool]]:
    """The exact names, and a test for names under a ``family/*`` pattern (``tools/*``
    matches ``tools/call``, not ``tools`` or ``tools/``)."""
    exact = set()
    prefixes = []
    for pattern in patterns:
        if pattern.endswith("/*"):
            prefixes.append(pattern[:-1])
        else:
            exact.add(pattern)
    families = tuple(prefixes)

    def in_family(method: str) -> bool:
        return any(method.startswith(prefix) and len(method) > len(prefix) for prefix in families)

    return frozenset(exact), in_family
