"""WriteBatch: several puts and deletes applied atomically (one WAL record)."""

from __future__ import annotations

from dataclasses import dataclass, field

# One operation: (tombstone, key, value, ts or None, expires_at_ms or None)
Op = tuple[bool, bytes, bytes, int | None, int | None]


@dataclass
class WriteBatch:
    """Operations written by `Engine.write` in one atomic, durable WAL record."""

    ops: list[Op] = field(default_factory=list)

    def put(
        self, key: bytes, value: bytes, ts: int | None = None, expires_at_ms: int | None = None
    ) -> WriteBatch:
        self.ops.append((False, bytes(key), bytes(value), ts, expires_at_ms))
        return self

    def delete(self, key: bytes, ts: int | None = None) -> WriteBatch:
        self.ops.append((True, bytes(key), b"", ts, None))
        return self

    def __len__(self) -> int:
        return len(self.ops)
