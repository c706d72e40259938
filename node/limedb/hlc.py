"""Hybrid logical clock: 64-bit timestamps (wall milliseconds << 16 | logical counter).

A leaf module (imports nothing from limedb) because both the storage engine, when used as a
library, and the cluster coordinator stamp versions with it.
"""

from __future__ import annotations

import threading
import time

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 64) - 1


def pack(millis: int, logical: int = 0) -> int:
    """Build a timestamp from wall-clock milliseconds and a logical counter."""
    return (millis << LOGICAL_BITS) | (logical & LOGICAL_MASK)


def millis_of(ts: int) -> int:
    """The wall-clock part of a timestamp, in milliseconds since the epoch."""
    return ts >> LOGICAL_BITS


def wall_millis() -> int:
    return time.time_ns() // 1_000_000


class HLC:
    """A thread-safe hybrid logical clock.

    `now()` never returns the same value twice and never goes backwards, even if the wall
    clock does. `observe(ts)` merges a timestamp seen from another node so that everything this
    node stamps afterwards orders after it (the usual HLC receive rule). When the logical counter
    would overflow within one millisecond the clock borrows the next millisecond.
    """

    __slots__ = ("_last", "_lock", "_wall")

    def __init__(self, wall=wall_millis) -> None:
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        physical = pack(self._wall())
        with self._lock:
            ts = physical if physical > self._last else self._last + 1
            self._last = ts
            return ts

    def observe(self, remote: int) -> int:
        """Merge a remote timestamp; returns a fresh local timestamp after both."""
        physical = pack(self._wall())
        with self._lock:
            ts = max(physical, self._last + 1, remote + 1)
            self._last = ts
            return ts

    @property
    def last(self) -> int:
        return self._last
