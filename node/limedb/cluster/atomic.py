"""Atomic read-modify-write of one key: Redis string operations serialized at the key's primary.

An `AtomicOp` is a named operation with byte arguments (`incrby`, `set` with NX/XX/GET/KEEPTTL,
`getdel`, `append`, `expire`, `persist`): a pure function of the key's current value and the
clock that decides what to write and what to answer. Because it is data, not a Python callable,
a node that is not the key's primary forwards it over the internal RPC (kind `ATOMIC`) and the
primary runs it under a per-key lock: read (quorum), compute, write (quorum) with a timestamp
newer than the version it read. docs/redis.md states exactly what that guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
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
)
from limedb.storage.errors import DiskFullError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Expiry times are stored as unsigned milliseconds; Redis refuses anything beyond int64 ms.
MAX_EXPIRES_MS = INT64_MAX

NOT_AN_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"


class CommandError(InvalidRequest):
    """A Redis-visible error; the message is the whole error line, prefix included."""


class Status(str):
    """A simple-string reply such as OK (as opposed to a bulk string)."""


OK = Status("OK")

Reply = int | bytes | Status | None


class Action(enum.Enum):
    KEEP = 0
    SET = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operation decided: the write to make (if any) and the reply to the client."""

    action: Action
    reply: Reply
    value: bytes = b""
    expires_at_ms: int | None = None


def _keep(reply: Reply) -> Outcome:
    return Outcome(Action.KEEP, reply)


def parse_int64(raw: bytes) -> int | None:
    """Redis's strict integer syntax: optional '-', no '+', no leading zeros, no spaces."""
    if not raw or len(raw) > 20:
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or not digits.isascii():
        return None
    if digits[:1] == b"0" and (len(digits) > 1 or raw[:1] == b"-"):
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


def int_arg(raw: bytes) -> int:
    value = parse_int64(raw)
    if value is None:
        raise CommandError(NOT_AN_INTEGER)
    return value


def _op_incrby(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    delta = int_arg(args[0])
    if current.value is None:
        old = 0
    else:
        parsed = parse_int64(current.value)
        if parsed is None:
            raise CommandError(NOT_AN_INTEGER)
        old = parsed
    new = old + delta
    if not INT64_MIN <= new <= INT64_MAX:
        raise CommandError(OVERFLOW)
    # Like Redis, INCR keeps the key's time to live.
    return Outcome(Action.SET, new, str(new).encode(), current.expires_at_ms)


def _op_set(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    """args: value, condition (b"" | b"nx" | b"xx"), get (b"0" | b"1"), expiry kind
    (b"none" | b"keep" | b"px" relative | b"pxat" absolute), expiry milliseconds."""
    value, condition, get, kind, amount = args
    old = current.value
    reply: Reply = old if get == b"1" else OK
    if (condition == b"nx" and old is not None) or (condition == b"xx" and old is None):
        return _keep(old if get == b"1" else None)
    if kind == b"keep":
        expires = current.expires_at_ms
    elif kind == b"px":
        expires = now_ms + int(amount)
    elif kind == b"pxat":
        expires = int(amount)
    else:
        expires = None
    if expires is not None and expires <= now_ms:
        # An expiry already in the past leaves no live value; a tombstone says so plainly
        # (also when a blind write did not read whether there was one).
        return Outcome(Action.DELETE, reply)
    return Outcome(Action.SET, reply, value, expires)


def _op_del(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    if current.value is None:
        return _keep(0)
    return Outcome(Action.DELETE, 1)


def _op_getdel(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    if current.value is None:
        return _keep(None)
    return Outcome(Action.DELETE, current.value)


def _op_append(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    """args: suffix, the largest value allowed (decimal)."""
    value = (current.value or b"") + args[0]
    if len(value) > int(args[1]):
        raise CommandError(
            f"ERR string exceeds maximum allowed size (max_value_bytes is {int(args[1])})"
        )
    return Outcome(Action.SET, len(value), value, current.expires_at_ms)


def _op_expire(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    """args: b"rel" | b"abs", milliseconds, conditions (comma-separated nx, xx, gt, lt)."""
    mode, amount, condition = args
    if current.value is None:
        return _keep(0)
    when = int(amount) + (now_ms if mode == b"rel" else 0)
    expires = current.expires_at_ms
    conditions = condition.split(b",") if condition else ()
    # No expiry counts as an infinite one for GT and LT, as in Redis.
    if (
        (b"nx" in conditions and expires is not None)
        or (b"xx" in conditions and expires is None)
        or (b"gt" in conditions and (expires is None or when <= expires))
        or (b"lt" in conditions and expires is not None and when >= expires)
    ):
        return _keep(0)
    if when <= now_ms:
        return Outcome(Action.DELETE, 1)
    return Outcome(Action.SET, 1, current.value, when)


def _op_persist(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    if current.value is None or current.expires_at_ms is None:
        return _keep(0)
    return Outcome(Action.SET, 1, current.value, None)


# Reads, for transactions: they run at the primary in the transaction's order.
def _op_get(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    return _keep(current.value)


def _op_strlen(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    return _keep(0 if current.value is None else len(current.value))


def _op_exists(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    return _keep(0 if current.value is None else 1)


def _op_pttl(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    if current.value is None:
        return _keep(-2)
    if current.expires_at_ms is None:
        return _keep(-1)
    return _keep(max(current.expires_at_ms - now_ms, 0))


def _op_type(current: ReadResult, args: tuple[bytes, ...], now_ms: int) -> Outcome:
    return _keep(Status("none") if current.value is None else Status("string"))


Operation = Callable[[ReadResult, tuple[bytes, ...], int], Outcome]
OPERATIONS: dict[str, tuple[int, Operation]] = {
    "incrby": (1, _op_incrby),
    "set": (5, _op_set),
    "getdel": (0, _op_getdel),
    "del": (0, _op_del),
    "append": (2, _op_append),
    "expire": (3, _op_expire),
    "persist": (0, _op_persist),
    "get": (0, _op_get),
    "strlen": (0, _op_strlen),
    "exists": (0, _op_exists),
    "pttl": (0, _op_pttl),
    "type": (0, _op_type),
}


@dataclass(frozen=True, slots=True)
class AtomicOp:
    """A named operation with its arguments; calling it decides the outcome for one value."""

    name: str
    args: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        entry = OPERATIONS.get(self.name)
        if entry is None or entry[0] != len(self.args):
            raise InvalidRequest(f"unknown atomic operation {self.name}/{len(self.args)}")

    def __call__(self, current: ReadResult, now_ms: int) -> Outcome:
        return OPERATIONS[self.name][1](current, self.args, now_ms)

    @property
    def blind(self) -> bool:
        """A plain SET: its outcome does not depend on the current value, so skip the read."""
        args = self.args
        return self.name == "set" and args[1] == b"" and args[2] == b"0" and args[3] != b"keep"


_NOTHING = ReadResult(None, "")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


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
_INT = struct.Struct("!q")
_REPLY_NONE, _REPLY_INT, _REPLY_BYTES, _REPLY_STATUS = b"\x00", b"\x01", b"\x02", b"\x03"


def consistency_code(consistency: Consistency | None) -> int:
    return _CONSISTENCY_CODES[consistency]


def consistency_of(code: int) -> Consistency | None:
    return _CONSISTENCY_OF[code]


def encode_request(key: bytes, op: AtomicOp, consistency: Consistency | None) -> bytes:
    parts = [
        bytes((_CONSISTENCY_CODES[consistency], len(op.name), len(op.args))),
        op.name.encode(),
        _LEN.pack(len(key)),
        key,
    ]
    for arg in op.args:
        parts += (_LEN.pack(len(arg)), arg)
    return b"".join(parts)


def decode_request(data: bytes) -> tuple[bytes, AtomicOp, Consistency | None]:
    code, name_len, nargs = data[0], data[1], data[2]
    offset = 3 + name_len
    name = data[3:offset].decode()
    fields: list[bytes] = []
    for _ in range(nargs + 1):
        (length,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        fields.append(data[offset : offset + length])
        offset += length
    return fields[0], AtomicOp(name, tuple(fields[1:])), _CONSISTENCY_OF[code]


def encode_reply(reply: Reply) -> bytes:
    if reply is None:
        return _REPLY_NONE
    if isinstance(reply, Status):
        return _REPLY_STATUS + reply.encode()
    if isinstance(reply, int):
        return _REPLY_INT + _INT.pack(reply)
    return _REPLY_BYTES + reply


def decode_reply(data: bytes) -> Reply:
    tag, body = data[:1], data[1:]
    if tag == _REPLY_INT:
        return _INT.unpack(body)[0]
    if tag == _REPLY_BYTES:
        return body
    if tag == _REPLY_STATUS:
        return Status(body.decode())
    return None


# ---------------------------------------------------------------------------- the cluster side

_INVALID = 400
_UNAVAILABLE = 503


class Writer(Protocol):
    """What the primary needs of the cluster coordinator."""

    node_id: str
    timeout_s: float

    def replicas(self, key: bytes) -> tuple[str, ...]: ...

    def _alive(self, node_id: str) -> bool: ...

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult: ...

    async def write(self, mutation, consistency: Consistency | None = None) -> bool: ...

    def stamp_after(self, ts: int) -> int: ...

    def physical_ms(self) -> int: ...


class ClusterAtomic:
    """Runs atomic operations at the key's primary: the first live replica in ring order.

    `call(node_id, kind, payload, timeout_s)` reaches a peer's RPC server; `mutation_of`
    builds the replicated write (limedb.cluster.replica.Mutation) so that this module does
    not depend on the replica wire format.
    """

    def __init__(
        self,
        coordinator: Writer,
        call: Callable[[str, int, bytes, float], Awaitable[bytes]],
        mutation_of: Callable[..., object],
    ) -> None:
        self.coordinator = coordinator
        self.call = call
        self.mutation_of = mutation_of
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
            if self.coordinator._alive(node):
                return node
        raise Unavailable(f"none of the {len(replicas)} replicas of the key is alive")

    async def atomic_update(
        self, key: bytes, fn: AtomicOp, consistency: Consistency | None = None
    ) -> Reply:
        primary = self.primary_of(key)
        if primary == self.coordinator.node_id:
            self.counters["atomic_local"] += 1
            return await self.apply_here(key, fn, consistency)
        self.counters["atomic_forwarded"] += 1
        payload = encode_request(key, fn, consistency)
        try:
            reply = await self.call(primary, rpc.ATOMIC, payload, self.coordinator.timeout_s)
        except rpc.RpcError as exc:
            if exc.code == _INVALID:
                raise CommandError(exc.message) from None
            if exc.code == rpc.INSUFFICIENT_STORAGE:
                raise InsufficientStorage(f"primary replica {primary}: {exc.message}") from None
            raise Unavailable(f"primary replica {primary}: {exc.message}") from None
        except rpc.PeerUnavailable as exc:
            if fn.blind:
                # A plain SET does not need the primary's read, and applying it twice leaves
                # the same value: coordinate it here rather than fail while the failure
                # detector has not yet declared the primary dead.
                self.counters["atomic_fallback"] += 1
                return await self.apply_here(key, fn, consistency)
            # Not retried elsewhere: the primary may have applied it, and INCR is not idempotent.
            raise Unavailable(f"primary replica {primary} did not answer: {exc}") from None
        return decode_reply(reply)

    async def apply_here(
        self, key: bytes, fn: AtomicOp, consistency: Consistency | None = None
    ) -> Reply:
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
        key, op, consistency = decode_request(body)
        try:
            return encode_reply(await self.apply_here(key, op, consistency))
        except InvalidRequest as exc:
            raise rpc.RpcError(_INVALID, str(exc)) from None
        except Unavailable as exc:
            raise rpc.RpcError(_UNAVAILABLE, str(exc)) from None
        except InsufficientStorage as exc:
            raise rpc.RpcError(rpc.INSUFFICIENT_STORAGE, str(exc)) from None

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.ATOMIC, self.handle)


async def apply_locally(
    locks: KeyLocks,
    key: bytes,
    fn: AtomicOp,
    read: Callable[[bytes], Awaitable[ReadResult]],
    engine,
    clock,
) -> Reply:
    """The single-node form: the same operation under a per-key lock, written to `engine`."""
    blind = fn.blind
    await locks.acquire(key, not blind)
    try:
        current = _NOTHING if blind else await read(key)
        outcome = fn(current, wall_ms())
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
            raise InsufficientStorage(str(exc), exc.retry_after_s) from exc
        return outcome.reply
    finally:
        locks.release(key, not blind)
