"""The replica side of replication: the wire format of mutations and reads, and applying them.

A coordinator sends REPLICATE (a versioned put or tombstone) and READ (a key) frames; the
replica applies them to its own engine with the coordinator's HLC timestamp, so every replica
converges on the same newest version by last-writer-wins. The same `Replica` object serves
local replicas in-process (no RPC to self) and remote ones through the RPC server.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets, TimestampRefused
from limedb.cluster.keys import storage_key
from limedb.hlc import HLC, wall_millis
from limedb.storage import WriteBatch
from limedb.storage.errors import DiskFullError, OutOfDescriptorsError
from limedb.storage.record import EXPIRES, TOMBSTONE, Rec, make_rec, newer

log = logging.getLogger(__name__)

_MUTATION = struct.Struct("!QQBI")  # ts, expires_at_ms (0 = never), tombstone, key length
_VERSION = struct.Struct("!QQB")  # ts, expires_at_ms, tombstone
_APPLIED = struct.Struct("!BB")  # applied, a live value existed before
# The error code of a READ refused by a replica that waits to be replaced.
REPLACING = 503
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
        """Last-writer-wins order, the storage engine's (`limedb.storage.record.newer`)."""
        if other is None:
            return True
        if self.ts != other.ts:  # the usual case, decided as `newer` decides it first
            return self.ts > other.ts
        if (
            self.value == other.value
            and self.tombstone == other.tombstone
            and self.expires_at_ms == other.expires_at_ms
        ):
            # The same version (two replicas agreeing, a read's usual answer): `newer` would
            # say False too, after building both records.
            return False
        return newer(self.as_rec(), other.as_rec())

    def as_rec(self) -> Rec:
        return make_rec(self.ts, self.value, self.tombstone, self.expires_at_ms)

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


# Who hears that a queued mutation is durable: how `_settle` answers a queue entry.
_FUTURE = 0  # a future of (applied, existed): Replica.apply_soon
_ENCODED = 1  # a future of the reply's wire encoding: Replica.handle_replicate
_CALLBACK = 2  # a callable (applied, existed, error): Replica.apply_then
_PEER = 3  # a peer's REPLICATE: its reply frame, sent on its connection (tag: request id)

# A REPLICATE's reply frame, header and body in one pack.
_REPLY_FRAME = struct.Struct("!IBIBB")

# (mutation, existed, how it is answered, the future/callable/connection, the request id)
_Queued = tuple[Mutation, bool, int, object, int]
Applied = Callable[[bool, bool, "BaseException | None"], None]


class Replica:
    """Applies mutations and answers reads against this node's engine.

    Mutations queued during one event-loop turn (from every peer connection and from the local
    coordinator) are written as one WriteBatch: one WAL record and one durable wait for all of
    them, instead of one per mutation. A peer's REPLICATE is answered straight from that wait:
    its reply frame is built and written with the batch's others on its connection, with no
    future or callback of its own.
    """

    def __init__(self, engine, hlc: HLC, clock: ClockOffsets | None = None) -> None:
        self.engine = engine
        self.hlc = hlc
        # Admits every timestamp before it is applied (and so before the clock observes it).
        self.clock = clock
        # The engine's own clock observes every timestamp it applies; only a separate clock
        # needs to be told here.
        self._observe = hlc is not engine.hlc
        self._queue: list[_Queued] = []
        # False while this node waits to be replaced (it came back on an empty disk under a
        # listed identity, limedb.cluster.rejoin): its "not found" would be a lost write.
        self.serves_reads = True
        self.batches = 0
        self.applied = 0

    def read(self, key: bytes) -> Stored | None:
        rec = self.engine.get_record(storage_key(key))
        if rec is None:
            return None
        flags = rec[2]
        return Stored(rec[0], rec[1], bool(flags & TOMBSTONE), rec[3] if flags & EXPIRES else None)

    def apply_soon(self, mutation: Mutation, *, encoded: bool = False) -> asyncio.Future:
        """Queue one mutation; once it is durable the future resolves to (applied, a live
        value existed before), or to that reply's wire encoding when `encoded`."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._enqueue(mutation, _ENCODED if encoded else _FUTURE, future, 0)
        except TimestampRefused as exc:
            future.set_exception(exc)
        return future

    def apply_then(self, mutation: Mutation, done: Applied) -> None:
        """`apply_soon` answered through `done(applied, existed, error)`, called once the
        mutation is durable (or refused: then at once) - no future (the local replica of a
        coordinator's write feeds its quorum so)."""
        try:
            self._enqueue(mutation, _CALLBACK, done, 0)
        except TimestampRefused as exc:
            done(False, False, exc)

    def _enqueue(self, mutation: Mutation, how: int, sink: object, request_id: int) -> None:
        """Admit and queue one mutation for this loop turn's batch; TimestampRefused when its
        timestamp lies beyond the maximum clock offset."""
        if self.clock is not None:
            self.clock.admit(mutation.ts)
        if self._observe:
            self.hlc.observe(mutation.ts)
        existed = False
        if mutation.tombstone:
            # Only deletes report whether the key existed (LimeDB's `1` / `0`).
            before = self.engine.get_version(storage_key(mutation.key))
            existed = before is not None and before.live(self.now_ms())
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._write_queued)
        self._queue.append((mutation, existed, how, sink, request_id))

    async def apply(self, mutation: Mutation) -> tuple[bool, bool]:
        return await self.apply_soon(mutation)

    def now_ms(self) -> int:
        """The physical time a value's expiry is judged against."""
        return self.clock.physical_ms() if self.clock is not None else wall_millis()

    def _write_queued(self) -> None:
        queued, self._queue = self._queue, []
        batch = WriteBatch()
        for entry in queued:
            mutation = entry[0]
            skey = storage_key(mutation.key)
            if mutation.tombstone:
                batch.delete(skey, mutation.ts)
            else:
                batch.put(skey, mutation.value, mutation.ts, mutation.expires_at_ms)
        self.batches += 1
        self.applied += len(queued)
        # Applied now; acknowledged once durable: the syncer's wake-up answers the whole batch
        # (no future, no task).
        try:
            self.engine.write_then(batch, partial(_settle, queued))
        except Exception as exc:  # e.g. the engine is closed or its disk full: all hear it
            _settle(queued, None, exc)

    # RPC handlers: bytes in, bytes (or a future of bytes) out.

    def handle_read(self, body: bytes) -> bytes:
        if not self.serves_reads:
            raise rpc.RpcError(REPLACING, "this replica lost its data and is being replaced")
        return encode_stored(self.read(body))

    def handle_replicate(self, body: bytes) -> asyncio.Future:
        return self.apply_soon(Mutation.decode(body), encoded=True)

    def replicate_deferred(self, body: bytes, connection: rpc.Replies, request_id: int) -> None:
        """A peer's REPLICATE, answered on `connection` once durable (rpc.DeferredHandler); a
        refused timestamp is answered at once."""
        self._enqueue(Mutation.decode(body), _PEER, connection, request_id)

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.READ, self.handle_read)
        server.register_deferred(rpc.REPLICATE, self.replicate_deferred)


def _remote_error(error: BaseException | None) -> BaseException | None:
    """A full disk travels to a remote coordinator as its own code: that coordinator answers
    507 (not 503) when this failure costs the write its quorum, and hints this replica. Out of
    file descriptors (the disk has room) travels as UNAVAILABLE."""
    if isinstance(error, OutOfDescriptorsError):
        return rpc.RpcError(rpc.UNAVAILABLE, str(error))
    if isinstance(error, DiskFullError):
        return rpc.RpcError(rpc.INSUFFICIENT_STORAGE, str(error))
    return error


def _settle(queued: list[_Queued], results: list[bool] | None, error: BaseException | None) -> None:
    """Answer every queued mutation: `results` once durable, else `error`. The replies to
    peers go out as one write per connection."""
    if error is not None:
        results = None
    remote_error = _remote_error(error)
    replies: dict[rpc.Replies, list[bytes]] = {}
    for i, (_, existed, how, sink, request_id) in enumerate(queued):
        if how == _PEER:
            if results is None:
                frame = rpc.error_frame(request_id, remote_error)  # type: ignore[arg-type]
            else:
                frame = _REPLY_FRAME.pack(_APPLIED.size, rpc.REPLY, request_id, results[i], existed)
            frames = replies.get(sink)  # type: ignore[call-overload]
            if frames is None:
                replies[sink] = [frame]  # type: ignore[index]
            else:
                frames.append(frame)
        elif how == _CALLBACK:
            try:
                if results is None:
                    sink(False, False, error)  # type: ignore[operator]
                else:
                    sink(bool(results[i]), existed, None)  # type: ignore[operator]
            except Exception:  # the batch's other writers must still hear their answer
                log.exception("a replica write's callback failed")
        elif not sink.done():  # type: ignore[attr-defined]
            if results is None:
                sink.set_exception(remote_error if how == _ENCODED else error)  # type: ignore[attr-defined]
            elif how == _ENCODED:
                sink.set_result(encode_applied(bool(results[i]), existed))  # type: ignore[attr-defined]
            else:
                sink.set_result((bool(results[i]), existed))  # type: ignore[attr-defined]
    for connection, frames in replies.items():
        connection.send_now(frames)
