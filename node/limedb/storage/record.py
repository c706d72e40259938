"""One version of a key: the public `Version` and the compact tuple the engine stores internally.

Internally a version is a plain tuple `(ts, value, flags, expires_at_ms or 0)` because creating
and indexing tuples are single C operations; the frozen `Version` dataclass is built only at the
API boundary (`get_version`, `iter_range`).
"""

from __future__ import annotations

from dataclasses import dataclass

TOMBSTONE = 1
EXPIRES = 2

# Internal record: (ts, value, flags, expires_at_ms or 0)
Rec = tuple[int, bytes, int, int]


@dataclass(frozen=True, slots=True)
class Version:
    """The newest stored version of a key (tombstones and expired values included)."""

    ts: int
    value: bytes
    tombstone: bool
    expires_at_ms: int | None

    def live(self, now_ms: int) -> bool:
        """True when the version is a value that has not expired at `now_ms`."""
        if self.tombstone:
            return False
        return self.expires_at_ms is None or self.expires_at_ms > now_ms


def make_rec(ts: int, value: bytes, tombstone: bool, expires_at_ms: int | None) -> Rec:
    flags = TOMBSTONE if tombstone else 0
    if expires_at_ms is not None:
        flags |= EXPIRES
        return (ts, b"" if tombstone else value, flags, expires_at_ms)
    return (ts, b"" if tombstone else value, flags, 0)


def to_version(rec: Rec) -> Version:
    flags = rec[2]
    return Version(rec[0], rec[1], bool(flags & TOMBSTONE), rec[3] if flags & EXPIRES else None)


def rec_live(rec: Rec, now_ms: int) -> bool:
    flags = rec[2]
    if not flags:
        return True
    if flags & TOMBSTONE:
        return False
    return rec[3] > now_ms


def newer(a: Rec, b: Rec) -> bool:
    """Whether `a` wins over `b` under last-writer-wins: the higher timestamp; on equal
    timestamps a tombstone beats a value; then the greater (value, expires_at_ms) wins.

    The order is total over distinct versions, so replicas that receive the same versions in any
    order keep the same one. This is the one comparison of versions: the engine, compaction,
    the cluster's read resolution, read repair and streaming all decide through it.
    """
    if a[0] != b[0]:
        return a[0] > b[0]
    a_tomb = a[2] & TOMBSTONE
    if a_tomb != b[2] & TOMBSTONE:
        return bool(a_tomb)
    return (a[1], a[3]) > (b[1], b[3])
