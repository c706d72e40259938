"""The replica side of replication: the wire format of mutations and reads, and applying them.

A coordinator sends REPLICATE (a versioned put or tombstone) and READ (a key) frames; the
replica applies them to its own engine with the coordinator's HLC timestamp, so every replica
converges on the same newest version by last-writer-wins. The same `Replica` object serves
local replicas in-process (no RPC to self) and remote ones through the RPC server.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from limedb.cluster import rpc
from limedb.cluster.keys import storage_key
from limedb.hlc import HLC

_MUTATION = struct.Struct("!QQBI")  # ts, expires_at_ms (0 = never), tombstone, key length
_VERSION = struct.Struct("!QQB")  # ts, expires_at_ms, tombstone
_APPLIED = struct.Struct("!BB")  # applied, a live value existed before
_FOUND = b"\x01"
_ABSENT = b"\x00"


@dataclass(frozen=True, slots=True)
class Mutation:
    """One versioned write of a user key: a value or a tombstone, stamped by the coordinator."""

    key: bytes
    value: bytes
    ts: int
    tombstone: bool = False
    expires_at_ms: int | None = None

    def encode(self) -> bytes:
        head = _MUTATION.pack(self.ts, self.expires_at_ms or 0, self.tombstone, len(self.key))
        return b"".join((head, self.key, self.value))

    @classmethod
    def decode(cls, data: bytes) -> Mutation:
        ts, expires, tombstone, key_len = _MUTATION.unpack_from(data)
        start = _MUTATION.size
        key = data[start : start + key_len]
        return cls(key, data[start + key_len :], ts, bool(tombstone), expires or None)


@dataclass(frozen=True, slots=True)
class Stored:
    """A replica's newest version of a key, as a read returns it (tombstones included)."""

    ts: int
    value: bytes
    tombstone: bool
    expires_at_ms: int | None

    def live(self, now_ms: int) -> bool:
        return not self.tombstone and (self.expires_at_ms is None or self.expires_at_ms > now_ms)

    def newer_than(self, other: Stored | None) -> bool:
        """Last-writer-wins order: higher ts, and at equal ts the tombstone wins."""
        if other is None:
            return True
        return (self.ts, self.tombstone) > (other.ts, other.tombstone)

    def as_mutation(self, key: bytes) -> Mutation:
        return Mutation(key, self.value, self.ts, self.tombstone, self.expires_at_ms)


def encode_stored(stored: Stored | None) -> bytes:
    if stored is None:
        return _ABSENT
    head = _VERSION.pack(stored.ts, stored.expires_at_ms or 0, stored.tombstone)
    return b"".join((_FOUND, head, stored.value))


def decode_stored(data: bytes) -> Stored | None:
    if data[:1] != _FOUND:
        return None
    ts, expires, tombstone = _VERSION.unpack_from(data, 1)
    return Stored(ts, data[1 + _VERSION.size :], bool(tombstone), expires or None)


def encode_applied(applied: bool, existed: bool) -> bytes:
    return _APPLIED.pack(applied, existed)


def decode_applied(data: bytes) -> tuple[bool, bool]:
    applied, existed = _APPLIED.unpack(data)
    return bool(applied), bool(existed)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Replica:
    """Applies mutations and answers reads against this node's engine."""

    def __init__(self, engine, hlc: HLC) -> None:
        self.engine = engine
        self.hlc = hlc

    def read(self, key: bytes) -> Stored | None:
        version = self.engine.get_version(storage_key(key))
        if version is None:
            return None
        return Stored(version.ts, version.value, version.tombstone, version.expires_at_ms)

    async def apply(self, mutation: Mutation) -> tuple[bool, bool]:
        """Apply one mutation durably; returns (applied, a live value existed before)."""
        self.hlc.observe(mutation.ts)
        skey = storage_key(mutation.key)
        before = self.engine.get_version(skey)
        existed = before is not None and before.live(wall_ms())
        if mutation.tombstone:
            applied = await self.engine.delete_async(skey, ts=mutation.ts)
        else:
            applied = await self.engine.put_async(
                skey, mutation.value, ts=mutation.ts, expires_at_ms=mutation.expires_at_ms
            )
        return bool(applied), existed

    # RPC handlers: bytes in, bytes (or an awaitable of bytes) out.

    def handle_read(self, body: bytes) -> bytes:
        return encode_stored(self.read(body))

    async def handle_replicate(self, body: bytes) -> bytes:
        applied, existed = await self.apply(Mutation.decode(body))
        return encode_applied(applied, existed)

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.READ, self.handle_read)
        server.register(rpc.REPLICATE, self.handle_replicate)
