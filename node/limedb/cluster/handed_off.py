"""Token ranges this node handed off in a transition's cleanup, and which of them still await
their purge from storage, persisted next to the data.

A cleanup tombstone is no way to drop a range (it would outrank the versions this node must
accept again if it regains the range, and would spread as a delete if streamed), so the range is
purged below last-writer-wins (`Engine.purge_ranges`). The purge is slow for a large store and
a node can die in the middle of it, so the range is recorded here first and stays `pending`
until the purge is durable (a restart resumes it). The range also stays hidden from the node's
listing and counts until the node owns it again: writes can still land in it after the purge
(a hint replayed to this node for a write it missed while it was a replica) and they are not
this node's keys. When the node is about to own the range again it is released (after purging
what is still pending of it). See docs/transitions.md, "Cleanup".
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from pathlib import Path

import orjson

from limedb.cluster.record_file import write_atomic

HANDED_OFF_FILE = "handed_off.json"


def merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive token ranges, sorted, overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def difference(
    kept: list[tuple[int, int]], removed: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Merged, sorted `kept` minus merged, sorted `removed`, in one sweep over both (a node's
    unowned ranges and its handed-off ones are each hundreds of pieces with 256 vnodes)."""
    pieces: list[tuple[int, int]] = []
    j = 0
    for start, end in kept:
        while j < len(removed) and removed[j][1] < start:
            j += 1
        k = j
        while start <= end and k < len(removed) and removed[k][0] <= end:
            r_start, r_end = removed[k]
            if r_start > start:
                pieces.append((start, r_start - 1))
            start = max(start, r_end + 1)
            k += 1
        if start <= end:
            pieces.append((start, end))
    return pieces


class HandedOff:
    """Persisted sets of disjoint, non-wrapping inclusive token ranges: the handed-off ones
    (`ranges()`, `in`) and the part of them whose purge is not done yet (`pending()`)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / HANDED_OFF_FILE
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._pending: list[tuple[int, int]] = []
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            doc = {}
        if isinstance(doc, list):  # written before purges existed: nothing of it was purged
            doc = {"handed_off": doc, "pending_purge": doc}
        self._set(merged((int(s), int(e)) for s, e in doc.get("handed_off", [])))
        self._pending = merged((int(s), int(e)) for s, e in doc.get("pending_purge", []))

    def _set(self, merged: list[tuple[int, int]]) -> None:
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def pending(self) -> list[tuple[int, int]]:
        """Handed-off ranges whose purge from storage is not durable yet."""
        return list(self._pending)

    def __contains__(self, token: int) -> bool:
        i = bisect.bisect_right(self._starts, token) - 1
        return i >= 0 and token <= self._ends[i]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def missing(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The pieces of `ranges` not handed off yet (merged): what a node that hands off the
        same ranges on every record it adopts still has to add, so that a repeated hand-off
        neither rewrites this file nor purges again."""
        return difference(merged(ranges), self.ranges())

    def add_all(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Hand off `ranges`: hidden from now on, and to be purged."""
        ranges = list(ranges)
        before, pending = self.ranges(), self._pending
        self._set(merged([*before, *ranges]))
        self._pending = merged([*pending, *ranges])
        if self.ranges() != before or self._pending != pending:
            self._save()

    def purged(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The purge of `ranges` is durable: nothing of them is pending any more."""
        pending = difference(self._pending, merged(ranges))
        if pending != self._pending:
            self._pending = pending
            self._save()

    def release_all(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Forget every part of the handed-off ranges that overlaps one of `ranges`."""
        released = merged(ranges)
        before, pending = self.ranges(), self._pending
        self._set(difference(before, released))
        self._pending = difference(pending, released)
        if self.ranges() != before or self._pending != pending:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"handed_off": self.ranges(), "pending_purge": self._pending}
        write_atomic(self.path, orjson.dumps(doc))
