"""Per-key rate limits: a token bucket for each API key.

A bucket holds up to ``burst`` tokens and refills at ``requests_per_second``; each request takes
one. An empty bucket answers 429 with ``Retry-After`` (when the next token arrives), which the
SDK honours before it retries.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimit", "RateLimiter"]


@dataclass(frozen=True)
class RateLimit:
    """``requests_per_second`` sustained, with bursts of up to ``burst`` requests."""

    requests_per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.requests_per_second > 0 or self.burst < 1:
            raise ValueError("a rate limit needs requests_per_second > 0 and burst >= 1")


class RateLimiter:
    """Token buckets keyed by principal. Thread-safe; ``monotonic`` is injectable for tests."""

    def __init__(
        self, limit: RateLimit, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, updated at)
        self._lock = threading.Lock()

    def acquire(self, principal: str) -> float | None:
        """Take a token: ``None`` when allowed, else the seconds until one is available."""
        limit = self._limit
        now = self._monotonic()
        with self._lock:
            tokens, updated = self._buckets.get(principal, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - updated) * limit.requests_per_second)
            if tokens >= 1.0:
                self._buckets[principal] = (tokens - 1.0, now)
                return None
            self._buckets[principal] = (tokens, now)
            return (1.0 - tokens) / limit.requests_per_second


def retry_after_headers(wait: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (HTTP's unit, rounded up), and the SDK's finer
    ``retry-after-ms``."""
    return {
        "Retry-After": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
