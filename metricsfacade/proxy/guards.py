"""Rate limiting per method and the circuit breaker that guards server restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class RateLimiter:
    """A token bucket per limited method: ``rate`` requests per second, bursts of ``rate``."""

    def __init__(self, rates: Mapping[str, float], clock: Callable[[], float] = time.monotonic):
        self._rates = dict(rates)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # method -> (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, method: str) -> bool:
        rate = self._rates.get(method)
        if rate is None:
            return True
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(method, (max(rate, 1.0), now))
            tokens = min(max(rate, 1.0), tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            self._buckets[method] = (tokens - 1.0 if allowed else tokens, now)
            return allowed


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; half-opens ``reset_secs`` later for one
    trial; closes on a success. ``on_change(state)`` reports every transition."""

    def __init__(
        self,
        failures: int,
        reset_secs: float,
        on_change: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._reset_secs = reset_secs
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self.state = CLOSED
        on_change(CLOSED)

    def allows_attempt(self) -> bool:
        """Closed, or open long enough to try once (which half-opens it)."""
        with self._lock:
            if self.state == OPEN and self._clock() - self._opened_at >= self._reset_secs:
                self._set(HALF_OPEN)
            return self.state != OPEN

    def seconds_until_trial(self) -> float:
        with self._lock:
            if self.state != OPEN:
                return 0.0
            return max(0.0, self._reset_secs - (self._clock() - self._opened_at))

    def success(self) -> None:
        if not self._failures and self.state == CLOSED:
            return  # the common case, on every response: no lock
        with self._lock:
            self._failures = 0
            if self.state != CLOSED:
                self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self.state == HALF_OPEN or self._failures >= self._threshold:
                self._opened_at = self._clock()
                if self.state != OPEN:
                    self._set(OPEN)

    def _set(self, state: str) -> None:
        self.state = state
        self._on_change(state)
