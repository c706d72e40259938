"""Transactions (RESP MULTI/EXEC): atomic operations on keys that share one primary, run there
in order while holding every one of their keys' locks, after checking the watched versions.

A transaction is data: a list of steps `(key, ReadModifyWrite)` (limedb.cluster.atomic; the
front end defines what each operation means and how its reply is encoded) and a list of watches `(key, version
timestamp seen at WATCH, 0 = absent)`. The primary of all its keys takes their locks
exclusively (in key order, so two transactions never wait for each other in a cycle; a single
operation holds one lock at a time), aborts if a watched key's version moved, then runs each
step against the key's current value (read at quorum once, then the transaction's own
writes), writing at quorum. No other operation of those keys runs in between. A step whose
operation refuses (e.g. INCR of a non-integer) answers its error and the others still run, as
in Redis; there is no rollback. docs/redis.md states the guarantee.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

from limedb.cluster import rpc
from limedb.cluster.atomic import (
    Action,
    ClusterAtomic,
    KeyLocks,
    OperationDecoder,
    OperationRefused,
    Outcome,
    ReadModifyWrite,
    answering_peer,
    consistency_code,
    consistency_of,
    decode_request,
    encode_request,
    primary_refused,
)
from limedb.cluster.service import (
    Consistency,
    InvalidRequest,
    ReadResult,
    Unavailable,
)

Step = tuple[bytes, ReadModifyWrite]
Watch = tuple[bytes, int]
StepResult = object  # the operation's reply, or the OperationRefused it raised


class ManyPrimaries(InvalidRequest):
    """A transaction's keys have different primaries, so no one node can run it atomically."""


_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ABORTED, _RAN = b"\x00", b"\x01"
_ERROR_TAG = b"\x04"


def keys_of(steps: list[Step], watches: list[Watch]) -> list[bytes]:
    """Every key a transaction touches or watches, sorted (the order locks are taken in)."""
    return sorted({key for key, _ in steps}.union(key for key, _ in watches))


async def run_batch(
    locks: KeyLocks,
    steps: list[Step],
    watches: list[Watch],
    read: Callable[[bytes], Awaitable[ReadResult]],
    apply: Callable[[bytes, Outcome, ReadResult], Awaitable[int]],
    now_ms: Callable[[], int],
) -> list[StepResult] | None:
    """Run a transaction here, as the primary of all its keys; None if a watch aborted it.

    `read(key)` reads the key's current version; `apply(key, outcome, current)` writes the
    outcome (SET or DELETE) with a timestamp newer than `current`'s and returns that stamp."""
    held: list[bytes] = []
    try:
        for key in keys_of(steps, watches):
            await locks.acquire(key, True)
            held.append(key)
        for key, seen in watches:
            if (await read(key)).ts != seen:
                return None
        known: dict[bytes, ReadResult] = {}
        results: list[StepResult] = []
        for key, op in steps:
            current = known.get(key)
            if current is None:
                current = await read(key)
            try:
                outcome = op(current, now_ms())
            except OperationRefused as exc:
                results.append(exc)
                known[key] = current
                continue
            if outcome.action is Action.SET:
                ts = await apply(key, outcome, current)
                current = ReadResult(outcome.value, current.owner_url, ts, outcome.expires_at_ms)
            elif outcome.action is Action.DELETE:
                ts = await apply(key, outcome, current)
                current = ReadResult(None, current.owner_url, ts)
            known[key] = current
            results.append(outcome.reply)
        return results
    finally:
        for key in reversed(held):
            locks.release(key, True)


# ---------------------------------------------------------------------------- wire format


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


class _Reader:
    """Reads a wire message front to back: counts, u64s and length-prefixed fields."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.offset)
        self.offset += _U32.size
        return value

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.offset)
        self.offset += _U64.size
        return value

    def field(self) -> bytes:
        length = self.u32()
        start, self.offset = self.offset, self.offset + length
        return self.data[start : self.offset]


def encode_batch(steps: list[Step], watches: list[Watch], consistency_code: int) -> bytes:
    parts = [bytes((consistency_code,)), _U32.pack(len(watches))]
    for key, ts in watches:
        parts += (_field(key), _U64.pack(ts))
    parts.append(_U32.pack(len(steps)))
    parts += (_field(encode_request(key, op, None)) for key, op in steps)
    return b"".join(parts)


def decode_batch(data: bytes, decode_op: OperationDecoder) -> tuple[list[Step], list[Watch], int]:
    reader = _Reader(data, 1)
    watches: list[Watch] = []
    for _ in range(reader.u32()):
        key = reader.field()
        watches.append((key, reader.u64()))
    steps: list[Step] = []
    for _ in range(reader.u32()):
        key, op, _ = decode_request(reader.field(), decode_op)
        steps.append((key, op))
    return steps, watches, data[0]


def encode_results(results: list[StepResult] | None, steps: list[Step]) -> bytes:
    """Each step's reply in its operation's own encoding, or the refusal it raised."""
    if results is None:
        return _ABORTED
    parts = [_RAN, _U32.pack(len(results))]
    for result, (_, op) in zip(results, steps, strict=True):
        refused = isinstance(result, OperationRefused)
        parts.append(
            _field(_ERROR_TAG + str(result).encode() if refused else op.encode_reply(result))
        )
    return b"".join(parts)


def decode_results(data: bytes, steps: list[Step]) -> list[StepResult] | None:
    if data[:1] == _ABORTED:
        return None
    reader = _Reader(data, 1)
    results: list[StepResult] = []
    for _, op in steps[: reader.u32()]:
        item = reader.field()
        if item[:1] == _ERROR_TAG:
            results.append(OperationRefused(item[1:].decode(errors="replace")))
        else:
            results.append(op.decode_reply(item))
    return results


# ---------------------------------------------------------------------------- the cluster side


class ClusterTransactions:
    """Routes a transaction to the one primary of all its keys (ClusterAtomic's), or refuses
    it (ManyPrimaries) when its keys have different primaries; serves forwarded ones."""

    def __init__(self, atomic: ClusterAtomic) -> None:
        self.atomic = atomic
        self.counters = {"transactions": 0, "transactions_aborted": 0, "transactions_served": 0}

    def primary_of_all(self, keys: list[bytes]) -> str:
        primaries = {key: self.atomic.primary_of(key) for key in keys}
        distinct = set(primaries.values())
        if len(distinct) > 1:
            raise ManyPrimaries(
                f"its {len(keys)} keys have {len(distinct)} different primaries; "
                "keep a transaction's keys on one primary, see docs/redis.md"
            )
        return distinct.pop()

    async def run(
        self, steps: list[Step], watches: list[Watch], consistency: Consistency | None = None
    ) -> list[StepResult] | None:
        keys = keys_of(steps, watches)
        if not keys:
            return []
        self.counters["transactions"] += 1
        primary = self.primary_of_all(keys)
        coordinator = self.atomic.coordinator
        if primary == coordinator.node_id:
            results = await self.run_here(steps, watches, consistency)
        else:
            payload = encode_batch(steps, watches, consistency_code(consistency))
            try:
                reply = await self.atomic.call(
                    primary, rpc.ATOMIC_BATCH, payload, coordinator.timeout_s
                )
            except rpc.RpcError as exc:
                raise primary_refused(primary, exc) from None
            except rpc.PeerUnavailable as exc:
                # Not retried: the primary may have applied part of it.
                raise Unavailable(f"primary replica {primary} did not answer: {exc}") from None
            results = decode_results(reply, steps)
        if results is None:
            self.counters["transactions_aborted"] += 1
        return results

    async def run_here(
        self, steps: list[Step], watches: list[Watch], consistency: Consistency | None
    ) -> list[StepResult] | None:
        coordinator = self.atomic.coordinator
        level = consistency if consistency is Consistency.ALL else Consistency.QUORUM
        mutation_of = self.atomic.mutation_of

        def read(key: bytes) -> Awaitable[ReadResult]:
            return coordinator.get(key, level)

        async def apply(key: bytes, outcome: Outcome, current: ReadResult) -> int:
            ts = coordinator.stamp_after(current.ts)
            if outcome.action is Action.SET:
                mutation = mutation_of(key, outcome.value, ts, False, outcome.expires_at_ms)
            else:
                mutation = mutation_of(key, b"", ts, True)
            await coordinator.write(mutation, level)
            return ts

        return await run_batch(
            self.atomic.locks, steps, watches, read, apply, coordinator.physical_ms
        )

    async def handle(self, body: bytes) -> bytes:
        """RPC handler of ATOMIC_BATCH: run a forwarded transaction here, as its primary."""
        self.counters["transactions_served"] += 1
        steps, watches, code = decode_batch(body, self.atomic.decode_op)
        with answering_peer():
            results = await self.run_here(steps, watches, consistency_of(code))
            return encode_results(results, steps)

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.ATOMIC_BATCH, self.handle)
