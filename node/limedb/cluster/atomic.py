"""Atomic read-modify-write of one key at its primary replica: the per-key lock and forwarding.

A `ReadModifyWrite` is an operation on one key's value that a front end defines (the Redis
string commands: limedb.resp.string_ops): a pure decision, from the key's current value and
the clock, of what to write and what to answer. Because it is data (a name and byte
arguments), a node that is not the key's primary forwards it over the internal RPC (kind
`ATOMIC`); the primary rebuilds it with the front end's `OperationDecoder` and runs it under a
per-key lock: read (quorum), decide, write (quorum) with a timestamp newer than the version it
read. docs/redis.md states exactly what that guarantees. What an operation means, and how its
reply is encoded, is the operation's business: this module only locks, forwards and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from limedb.cluster import rpc
from limedb.cluster.keys import storage_key
from limedb.cluster.service import (
    Consistency,
    InsufficientStorage,
    InvalidRequest,
    ReadResult,
    Unavailable,
    refused_write,
)
from limedb.hlc import wall_millis
from limedb.storage.errors import DiskFullError


class OperationRefused(InvalidRequest):
    """An operation refused the value it found (e.g. not an integer); the message is the whole
    error the client sees. A forwarded refusal comes back as this too."""


class Action(enum.Enum):
    KEEP = 0
    SET = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operation decided: the write to make (if any) and the reply to the client."""

    action: Action
    reply: object
    value: bytes = b""
    expires_at_ms: int | None = None


class ReadModifyWrite(Protocol):
    """One read-modify-write of a key, as data a peer can rebuild (`name`, `args`)."""

    @property
    def name(self) -> str: ...

    @property
    def args(self) -> tuple[bytes, ...]: ...

    @property
    def blind(self) -> bool:
        """Whether the outcome does not depend on the current value (no read needed)."""
        ...

    def __call__(self, current: ReadResult, now_ms: int) -> Outcome: ...

    def encode_reply(self, reply: object) -> bytes: ...

    def decode_reply(self, data: bytes) -> object: ...


# Rebuilds a forwarded operation from its name and arguments; raises InvalidRequest when
# there is no such operation.
OperationDecoder = Callable[[str, tuple[bytes, ...]], ReadModifyWrite]

_NOTHING = ReadResult(None, "")


class _KeyState:
    __slots__ = ("exclusive", "shared", "waiters")

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiters: deque[tuple[bool, asyncio.Future]] = deque()


class KeyLocks:
    """Per-key shared/exclusive locks, first come first served; no state for idle keys.

    Read-modify-write operations hold a key exclusively. Blind writes (plain SET) only share
    it: their timestamps are taken in arrival order, so several may replicate at once and the
    last one still wins everywhere, but none may be in flight while an operation reads.
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, _KeyState] = {}

    async def acquire(self, key: bytes, exclusive: bool = True) -> None:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
            if exclusive:
                state.exclusive = True
            else:
                state.shared = 1
            return
        if not exclusive and not state.exclusive and not state.waiters:
            state.shared += 1
            return
        granted = asyncio.get_running_loop().create_future()
        state.waiters.append((exclusive, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(key, exclusive)  # granted just as the waiter was cancelled
            raise

    def release(self, key: bytes, exclusive: bool = True) -> None:
        state = self._keys[key]
        if exclusive:
            state.exclusive = False
        else:
            state.shared -= 1
        waiters = state.waiters
        while waiters:
            wants_exclusive, granted = waiters[0]
            if granted.done():  # its waiter was cancelled
                waiters.popleft()
                continue
            if state.exclusive or (wants_exclusive and state.shared):
                break
            waiters.popleft()
            if wants_exclusive:
                state.exclusive = True
            else:
                state.shared += 1
            granted.set_result(None)
        if not state.shared and not state.exclusive and not waiters:
            del self._keys[key]

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes, exclusive: bool = True) -> AsyncIterator[None]:
        await self.acquire(key, exclusive)
        try:
            yield
        finally:
            self.release(key, exclusive)

    def __len__(self) -> int:
        return len(self._keys)


# ---------------------------------------------------------------------------- wire format

_CONSISTENCY_CODES = {None: 0, Consistency.ONE: 1, Consistency.QUORUM: 2, Consistency.ALL: 3}
_CONSISTENCY_OF = {code: level for level, code in _CONSISTENCY_CODES.items()}
_LEN = struct.Struct("!I")


def consistency_code(consistency: Consistency | None) -> int:
    return _CONSISTENCY_CODES[consistency]


def consistency_of(code: int) -> Consistency | None:
    return _CONSISTENCY_OF[code]


def encode_request(key: bytes, op: ReadModifyWrite, consistency: Consistency | None) -> bytes:
    parts = [
        bytes((_CONSISTENCY_CODES[consistency], len(op.name), len(op.args))),
        op.name.encode(),
        _LEN.pack(len(key)),
        key,
    ]
    for arg in op.args:
        parts += (_LEN.pack(len(arg)), arg)
    return b"".join(parts)


def decode_request(
    data: bytes, decode_op: OperationDecoder
) -> tuple[bytes, ReadModifyWrite, Consistency | None]:
    code, name_len, nargs = data[0], data[1], data[2]
    offset = 3 + name_len
    name = data[3:offset].decode()
    fields: list[bytes] = []
    for _ in range(nargs + 1):
        (length,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        fields.append(data[offset : offset + length])
        offset += length
    return fields[0], decode_op(name, tuple(fields[1:])), _CONSISTENCY_OF[code]


# ---------------------------------------------------------------------------- the cluster side

_INVALID = 400


@contextlib.contextmanager
def answering_peer() -> Iterator[None]:
    """At the primary, serving a forwarded request: what the run raises becomes the RpcError
    that `primary_refused` turns back into the same kind of error at the forwarder."""
    try:
        yield
    except InvalidRequest as exc:
        raise rpc.RpcError(_INVALID, str(exc)) from None
    except Unavailable as exc:
        raise rpc.RpcError(rpc.UNAVAILABLE, str(exc)) from None
    except InsufficientStorage as exc:
        raise rpc.RpcError(rpc.INSUFFICIENT_STORAGE, str(exc)) from None


def primary_refused(primary: str, exc: rpc.RpcError) -> Exception:
    """At the forwarder: the error the primary answered, as the service error it was there (an
    operation's refusal keeps its message whole: it is what the client sees)."""
    if exc.code == _INVALID:
        return OperationRefused(exc.message)
    if exc.code == rpc.INSUFFICIENT_STORAGE:
        return InsufficientStorage(f"primary replica {primary}: {exc.message}")
    return Unavailable(f"primary replica {primary}: {exc.message}")


class Writer(Protocol):
    """What the primary needs of the cluster coordinator."""

    node_id: str
    timeout_s: float

    def replicas(self, key: bytes) -> tuple[str, ...]: ...

    def reachable(self, node_id: str) -> bool: ...

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult: ...

    async def write(self, mutation, consistency: Consistency | None = None) -> bool: ...

    def stamp_after(self, ts: int) -> int: ...

    def physical_ms(self) -> int: ...


class ClusterAtomic:
    """Runs atomic operations at the key's primary: the first live replica in ring order.

    `call(node_id, kind, payload, timeout_s)` reaches a peer's RPC server; `mutation_of`
    builds the replicated write (limedb.cluster.replica.Mutation) so that this module does
    not depend on the replica wire format; `decode_op` rebuilds the operations peers forward.
    """

    def __init__(
        self,
        coordinator: Writer,
        call: Callable[[str, int, bytes, float], Awaitable[bytes]],
        mutation_of: Callable[..., object],
        decode_op: OperationDecoder,
    ) -> None:
        self.coordinator = coordinator
        self.call = call
        self.mutation_of = mutation_of
        self.decode_op = decode_op
        self.locks = KeyLocks()
        self.counters = {
            "atomic_local": 0,
            "atomic_forwarded": 0,
            "atomic_served": 0,
            "atomic_fallback": 0,
        }

    def primary_of(self, key: bytes) -> str:
        replicas = self.coordinator.replicas(key)
        for node in replicas:
            if self.coordinator.reachable(node):
                return node
        raise Unavailable(f"none of the {len(replicas)} replicas of the key is alive")

    async def atomic_update(
        self, key: bytes, fn: ReadModifyWrite, consistency: Consistency | None = None
    ) -> object:
        primary = self.primary_of(key)
        if primary == self.coordinator.node_id:
            self.counters["atomic_local"] += 1
            return await self.apply_here(key, fn, consistency)
        self.counters["atomic_forwarded"] += 1
        payload = encode_request(key, fn, consistency)
        try:
            reply = await self.call(primary, rpc.ATOMIC, payload, self.coordinator.timeout_s)
        except rpc.RpcError as exc:
            raise primary_refused(primary, exc) from None
        except rpc.PeerUnavailable as exc:
            if fn.blind:
                # A plain SET does not need the primary's read, and applying it twice leaves
                # the same value: coordinate it here rather than fail while the failure
                # detector has not yet declared the primary dead.
                self.counters["atomic_fallback"] += 1
                return await self.apply_here(key, fn, consistency)
            # Not retried elsewhere: the primary may have applied it, and INCR is not idempotent.
            raise Unavailable(f"primary replica {primary} did not answer: {exc}") from None
        return fn.decode_reply(reply)

    async def apply_here(
        self, key: bytes, fn: ReadModifyWrite, consistency: Consistency | None = None
    ) -> object:
        # Read and write at least at quorum so that R + W > RF: the next operation under this
        # lock sees this one's write even if the local replica missed it.
        level = consistency if consistency is Consistency.ALL else Consistency.QUORUM
        blind = fn.blind
        await self.locks.acquire(key, not blind)
        try:
            current = _NOTHING if blind else await self.coordinator.get(key, level)
            outcome = fn(current, self.coordinator.physical_ms())
            if outcome.action is Action.SET:
                ts = self.coordinator.stamp_after(current.ts)
                mutation = self.mutation_of(key, outcome.value, ts, False, outcome.expires_at_ms)
                await self.coordinator.write(mutation, level)
            elif outcome.action is Action.DELETE:
                ts = self.coordinator.stamp_after(current.ts)
                await self.coordinator.write(self.mutation_of(key, b"", ts, True), level)
            return outcome.reply
        finally:
            self.locks.release(key, not blind)

    async def handle(self, body: bytes) -> bytes:
        """RPC handler of ATOMIC: run a forwarded operation here, as its primary."""
        self.counters["atomic_served"] += 1
        key, op, consistency = decode_request(body, self.decode_op)
        with answering_peer():
            return op.encode_reply(await self.apply_here(key, op, consistency))

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.ATOMIC, self.handle)


async def apply_locally(
    locks: KeyLocks,
    key: bytes,
    fn: ReadModifyWrite,
    read: Callable[[bytes], Awaitable[ReadResult]],
    engine,
    clock,
) -> object:
    """The single-node form: the same operation under a per-key lock, written to `engine`."""
    blind = fn.blind
    await locks.acquire(key, not blind)
    try:
        current = _NOTHING if blind else await read(key)
        outcome = fn(current, wall_millis())
        try:
            if outcome.action is Action.SET:
                await engine.put_async(
                    storage_key(key),
                    outcome.value,
                    ts=clock.now(),
                    expires_at_ms=outcome.expires_at_ms,
                )
            elif outcome.action is Action.DELETE:
                await engine.delete_async(storage_key(key), ts=clock.now())
        except DiskFullError as exc:
            raise refused_write(exc) from exc
        return outcome.reply
    finally:
        locks.release(key, not blind)
