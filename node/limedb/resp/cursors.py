"""SCAN cursors: small integers standing for "resume after this key", shared by all connections.

LimeDB's local key order is (token, key), which no 64-bit number can name exactly, so a cursor
is an id in a bounded table (oldest forgotten first). Clients only ever echo a cursor back, so
this keeps SCAN's contract while staying within the unsigned 64-bit range every client parses.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict


class ScanCursors:
    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._after: OrderedDict[int, bytes] = OrderedDict()
        self._ids = itertools.count(1)

    def add(self, after: bytes) -> int:
        cursor = next(self._ids)
        self._after[cursor] = after
        if len(self._after) > self._capacity:
            self._after.popitem(last=False)
        return cursor

    def get(self, cursor: int) -> bytes | None:
        return self._after.get(cursor)
