"""An LRU cache of decoded SSTable data blocks, charged by their on-disk size.

A cached block is a dict key -> record, so a hit costs two dict lookups. Hits do not take the
lock (OrderedDict operations are single C calls under the GIL); inserts and evictions do.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class BlockCache:
    __slots__ = ("capacity", "used", "hits", "misses", "_map", "_charges", "_lock")

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._map: OrderedDict[int, Any] = OrderedDict()
        self._charges: dict[int, int] = {}
        self._lock = threading.Lock()

    def get(self, key: int) -> Any:
        value = self._map.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self._map.move_to_end(key)
        except KeyError:  # evicted by another thread between the two calls
            pass
        return value

    def put(self, key: int, value: Any, charge: int) -> None:
        if charge > self.capacity:
            return
        with self._lock:
            if key in self._charges:
                return
            self._map[key] = value
            self._charges[key] = charge
            self.used += charge
            while self.used > self.capacity:
                old, _ = self._map.popitem(last=False)
                self.used -= self._charges.pop(old)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._map)
