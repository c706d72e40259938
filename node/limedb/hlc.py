"""Hybrid logical clock: 64-bit timestamps (wall milliseconds << 16 | logical counter).

A leaf module (imports nothing from limedb) because both the storage engine, when used as a
library, and the cluster coordinator stamp versions with it.

The clock adopts a timestamp from elsewhere only when it lies at most `max_offset_ms` ahead of
this process's own wall clock: a peer whose clock runs far ahead (or a forged frame carrying
2^64-1) can then never drag this clock forward, nor overflow the 48-bit millisecond field.
"""

from __future__ import annotations

import threading
import time

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 64) - 1
# The default bound of a clock built without one (an engine used as a library); a node takes
# its bound from the `max_clock_offset_ms` setting.
DEFAULT_MAX_OFFSET_MS = 5000


def pack(millis: int, logical: int = 0) -> int:
    """Build a timestamp from wall-clock milliseconds and a logical counter."""
    return (millis << LOGICAL_BITS) | (logical & LOGICAL_MASK)


def millis_of(ts: int) -> int:
    """The wall-clock part of a timestamp, in milliseconds since the epoch."""
    return ts >> LOGICAL_BITS


def wall_millis() -> int:
    return time.time_ns() // 1_000_000


def ahead_ms(ts: int, now_ms: int) -> int:
    """How far `ts` lies ahead of the physical time `now_ms` (negative: behind)."""
    return millis_of(ts) - now_ms


def within_bound(ts: int, now_ms: int, max_offset_ms: int) -> bool:
    """Whether `ts` is a valid timestamp at most `max_offset_ms` ahead of `now_ms`."""
    return 0 <= ts <= MAX_TIMESTAMP and millis_of(ts) <= now_ms + max_offset_ms


class ClockOffsetError(Exception):
    """A timestamp lies further ahead of this clock than the maximum offset allows."""

    def __init__(self, ts: int, now_ms: int, max_offset_ms: int) -> None:
        super().__init__(
            f"timestamp {ts} is {ahead_ms(ts, now_ms) / 1000:.3f} s ahead of this node's clock "
            f"(maximum clock offset {max_offset_ms / 1000:g} s)"
        )
        self.ts = ts
        self.ahead_ms = ahead_ms(ts, now_ms)


class HLC:
    """A thread-safe hybrid logical clock.

    `now()` never returns the same value twice and never goes backwards, even if the wall
    clock does. `observe(ts)` merges a timestamp seen from another node so that everything this
    node stamps afterwards orders after it (the usual HLC receive rule), unless `ts` is more
    than `max_offset_ms` ahead of this wall clock: then the clock stays where it is and
    `not_adopted` counts it. `after(ts)` is a stamp that must order after `ts` (a
    read-modify-write) and raises ClockOffsetError instead. When the logical counter would
    overflow within one millisecond the clock borrows the next millisecond.
    """

    __slots__ = ("_last", "_lock", "_wall", "max_offset_ms", "not_adopted")

    def __init__(self, wall=wall_millis, max_offset_ms: int = DEFAULT_MAX_OFFSET_MS) -> None:
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()
        self.max_offset_ms = max_offset_ms
        self.not_adopted = 0

    def now(self) -> int:
        physical = self._wall() << LOGICAL_BITS  # pack(wall), inline: a call per write less
        with self._lock:
            ts = physical if physical > self._last else self._last + 1
            self._last = ts
            return ts

    def observe(self, remote: int) -> int:
        """Merge a remote timestamp if it is within the bound; returns a fresh local
        timestamp (after `remote` when it was adopted)."""
        wall = self._wall()
        # within_bound and pack, inline: every replica's every write observes its stamp.
        if not (
            0 <= remote <= MAX_TIMESTAMP and remote >> LOGICAL_BITS <= wall + self.max_offset_ms
        ):
            self.not_adopted += 1
            remote = 0
        physical = wall << LOGICAL_BITS
        with self._lock:
            ts = max(physical, self._last + 1, remote + 1)
            self._last = ts
            return ts

    def after(self, remote: int) -> int:
        """A fresh timestamp ordered after `remote`; ClockOffsetError when `remote` is beyond
        the bound (adopting it would drag this clock forward)."""
        wall = self._wall()
        if not within_bound(remote, wall, self.max_offset_ms):
            raise ClockOffsetError(remote, wall, self.max_offset_ms)
        return self.observe(remote)

    def resume_after(self, own: int) -> int:
        """Continue after this node's own history (the newest timestamp it stores, at
        recovery), whatever the bound: a version stamped below one already stored would lose
        to it, so an acknowledged write would silently not be the value read. A clock that
        ends up ahead of the wall clock this way runs ahead until real time catches up (a
        cluster node then refuses to stamp writes, limedb.cluster.clock_offset)."""
        if not 0 <= own <= MAX_TIMESTAMP:
            raise ValueError(f"timestamp {own} does not fit 64 bits")
        with self._lock:
            self._last = max(self._last, own)
        return self.now()

    @property
    def last(self) -> int:
        return self._last
