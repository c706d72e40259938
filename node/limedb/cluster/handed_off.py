"""Token ranges this node handed off in a transition's cleanup, persisted next to the data.

The storage engine resolves every write last-writer-wins and has no way to drop a version
without writing a newer one, and a cleanup tombstone would outrank the very versions this node
must accept again if it regains the range later (and would spread as a delete if streamed).
So cleanup records the range here instead: the node's local listing hides it and it never
serves it as a source, and the range is released again, before any data streams in, when the
node becomes one of its owners once more. Reclaiming the disk space needs a range purge in the
engine (see docs/cluster.md, "Transitions").
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from pathlib import Path

import orjson

from limedb.cluster.ring_store import write_atomic

HANDED_OFF_FILE = "handed_off.json"


def _minus(s: int, e: int, start: int, end: int) -> list[tuple[int, int]]:
    """s..e without start..end (zero, one or two pieces)."""
    if e < start or s > end:
        return [(s, e)]
    pieces = []
    if s < start:
        pieces.append((s, start - 1))
    if e > end:
        pieces.append((end + 1, e))
    return pieces


class HandedOff:
    """A persisted set of disjoint, non-wrapping inclusive token ranges."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / HANDED_OFF_FILE
        self._starts: list[int] = []
        self._ends: list[int] = []
        try:
            ranges = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            ranges = []
        self._set(sorted((int(s), int(e)) for s, e in ranges))

    def _set(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __contains__(self, token: int) -> bool:
        i = bisect.bisect_right(self._starts, token) - 1
        return i >= 0 and token <= self._ends[i]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add_all(self, ranges: Iterable[tuple[int, int]]) -> None:
        before = self.ranges()
        self._set([*before, *ranges])
        if self.ranges() != before:
            self._save()

    def release_all(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Forget every part of the handed-off ranges that overlaps one of `ranges`."""
        before = kept = self.ranges()
        for start, end in ranges:
            kept = [piece for s, e in kept for piece in _minus(s, e, start, end)]
        if kept != before:
            self._set(kept)
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, orjson.dumps(self.ranges()))
