"""Timing a block or a function into a histogram of seconds."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Timing:
    """Observes elapsed seconds: ``with``, ``async with``, or as a decorator.

    Each ``.time()`` call makes a new Timing, so concurrent uses never share a start time;
    as a decorator it measures every call separately. The elapsed time is observed even when
    the block raises, and the exception propagates unchanged.
    """

    __slots__ = ("_observe", "_start")

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._start = 0.0

    def __enter__(self) -> Timing:
        self._start = perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._observe(perf_counter() - self._start)

    async def __aenter__(self) -> Timing:
        self._start = perf_counter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._observe(perf_counter() - self._start)

    def __call__(self, func: F) -> F:
        observe = self._observe
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
                start = perf_counter()
                try:
                    return await func(*args, **kwargs)
                finally:
                    observe(perf_counter() - start)

            return timed_coroutine  # type: ignore[return-value]

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                observe(perf_counter() - start)

        return timed  # type: ignore[return-value]
