"""Replay protection: a freshness window plus a cache of recently seen messages.

A captured signed message stays valid forever with stock Celery. The kit
rejects envelopes older than ``window`` seconds (or dated more than
``clock_skew`` seconds in the future) and remembers every accepted message
key for ``window + clock_skew`` seconds, so a copy inside the window is
rejected as a duplicate and a copy outside it as expired.

The cache lives in the worker's consumer (main) process, per worker node:
two worker *nodes* consuming the same queue do not share it, so a replayed
copy inside the window can still run once on another node. See the README.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["ReplayCache"]


class ReplayCache:
    """Freshness window and duplicate detection, bounded in time and size."""

    def __init__(
        self,
        window: float,
        clock_skew: float,
        *,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = float(window)
        self.clock_skew = float(clock_skew)
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return the number of remembered messages."""
        return len(self._seen)

    def _purge(self, now: float) -> None:
        # Entries are inserted in arrival order with a fixed lifetime, so the
        # oldest expiry is always first.
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]

    def check(self, key: Hashable, timestamp: float) -> str | None:
        """Record ``key`` and return None if fresh, else the rejection reason.

        Reasons: ``expired-envelope`` (older than the window), ``future-envelope``
        (beyond the allowed clock skew), ``replay`` (seen within the window),
        ``replay-cache-full`` (fail closed rather than forget).
        """
        now = self._clock()
        age = now - timestamp
        if age > self.window + self.clock_skew:
            return "expired-envelope"
        if age < -self.clock_skew:
            return "future-envelope"
        with self._lock:
            self._purge(now)
            if key in self._seen:
                return "replay"
            if len(self._seen) >= self.max_entries:
                return "replay-cache-full"
            self._seen[key] = now + self.window + 2 * self.clock_skew
        return None
