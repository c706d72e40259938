"""The Redis string and keyspace commands, served through the KeyValueService.

Reads (GET, MGET, EXISTS, STRLEN, TTL, PTTL) call `get` on the node the client is connected to,
at the service's default consistency. Every write (SET in all its forms, MSET, DEL, INCR, ...)
is a `StringOp` (limedb.resp.string_ops) run by `atomic_update` at the key's primary replica
under that key's lock, so the writes of one key are stamped by one clock in the order the
primary receives them, and the ones that read first (INCR family, SET NX/XX/GET/KEEPTTL,
GETDEL, APPEND, EXPIRE, PERSIST) read and write atomically. SCAN and DBSIZE see this node's local keys only (docs/redis.md).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from limedb.auth.records import RESERVED_PREFIX
from limedb.hlc import wall_millis
from limedb.resp.commands import SYNTAX_ERROR, command
from limedb.resp.encoding import OK, RespError, Status
from limedb.resp.session import Session
from limedb.resp.string_ops import INT64_MAX, StringOp, int_arg, plain_set

SCAN_COUNT_MAX = 100_000
EMPTY_KEY = RespError("ERR empty keys are not supported by LimeDB")


def check_key(session: Session, key: bytes) -> bytes:
    if not key:
        raise EMPTY_KEY
    limit = session.server.limits.max_key_bytes
    if len(key) > limit:
        raise RespError(f"ERR key is {len(key)} bytes, the maximum is {limit} (max_key_bytes)")
    return key


def check_value(session: Session, value: bytes) -> bytes:
    limit = session.server.limits.max_value_bytes
    if len(value) > limit:
        raise RespError(
            f"ERR string exceeds maximum allowed size ({len(value)} bytes, "
            f"max_value_bytes is {limit})"
        )
    return value


def _expire_time_error(name: str) -> RespError:
    return RespError(f"ERR invalid expire time in '{name}' command")


# ---------------------------------------------------------------------------- reads


@command("get", 2, flags=("readonly", "fast"), keys=(1, 1, 1), summary="Get the value of a key")
async def get(session: Session, argv: list[bytes]) -> Any:
    server = session.server
    result = await server.service.get(check_key(session, argv[1]))
    if result.value is None:
        server.stats.keyspace_misses += 1
    else:
        server.stats.keyspace_hits += 1
    return result.value


async def _gather_reads(session: Session, keys: list[bytes]) -> list[Any]:
    service = session.server.service
    for key in keys:
        check_key(session, key)
    if len(keys) == 1:
        return [await service.get(keys[0])]
    # Concurrent: in a cluster each read may wait on other replicas.
    return list(await asyncio.gather(*(service.get(key) for key in keys)))


@command("mget", -2, flags=("readonly", "fast"), keys=(1, -1, 1), summary="Get several values")
async def mget(session: Session, argv: list[bytes]) -> Any:
    results = await _gather_reads(session, argv[1:])
    stats = session.server.stats
    for result in results:
        if result.value is None:
            stats.keyspace_misses += 1
        else:
            stats.keyspace_hits += 1
    return [result.value for result in results]


@command("exists", -2, flags=("readonly", "fast"), group="generic", keys=(1, -1, 1))
async def exists(session: Session, argv: list[bytes]) -> Any:
    """Count how many of the keys exist"""
    results = await _gather_reads(session, argv[1:])
    return sum(1 for result in results if result.value is not None)


@command("strlen", 2, flags=("readonly", "fast"), keys=(1, 1, 1))
async def strlen(session: Session, argv: list[bytes]) -> Any:
    """Get the length of a value"""
    result = await session.server.service.get(check_key(session, argv[1]))
    return 0 if result.value is None else len(result.value)


async def _ttl_ms(session: Session, key: bytes) -> int:
    result = await session.server.service.get(check_key(session, key))
    if result.value is None:
        return -2
    if result.expires_at_ms is None:
        return -1
    return max(result.expires_at_ms - wall_millis(), 0)


@command("ttl", 2, flags=("readonly", "fast"), group="generic", keys=(1, 1, 1))
async def ttl(session: Session, argv: list[bytes]) -> Any:
    """Time to live of a key in seconds"""
    remaining = await _ttl_ms(session, argv[1])
    return remaining if remaining < 0 else (remaining + 500) // 1000


@command("pttl", 2, flags=("readonly", "fast"), group="generic", keys=(1, 1, 1))
async def pttl(session: Session, argv: list[bytes]) -> Any:
    """Time to live of a key in milliseconds"""
    return await _ttl_ms(session, argv[1])


# ---------------------------------------------------------------------------- plain writes


class SetOptions:
    """SET's options, parsed with Redis's rules for which combinations are a syntax error."""

    __slots__ = ("condition", "expiry", "get", "keepttl", "unit_ms")

    def __init__(self) -> None:
        self.condition = b""
        self.get = False
        self.keepttl = False
        self.expiry: tuple[bytes, bytes] | None = None  # (option name, raw amount)
        self.unit_ms = 0

    @classmethod
    def parse(cls, argv: list[bytes]) -> SetOptions:
        opts = cls()
        i = 3
        while i < len(argv):
            opt = argv[i].lower()
            has_next = i + 1 < len(argv)
            if opt == b"nx" and opts.condition != b"xx":
                opts.condition = b"nx"
            elif opt == b"xx" and opts.condition != b"nx":
                opts.condition = b"xx"
            elif opt == b"get":
                opts.get = True
            elif opt == b"keepttl" and opts.expiry is None:
                opts.keepttl = True
            elif (
                opt in (b"ex", b"px", b"exat", b"pxat")
                and not opts.keepttl
                and (opts.expiry is None or opts.expiry[0] == opt)
                and has_next
            ):
                opts.expiry = (opt, argv[i + 1])
                i += 1
            else:
                raise SYNTAX_ERROR
            i += 1
        return opts

    def expiry_ms(self, now_ms: int) -> tuple[bytes, int] | None:
        """("px", relative ms) or ("pxat", absolute ms); Redis's checks and error texts."""
        if self.expiry is None:
            return None
        opt, raw = self.expiry
        amount = int_arg(raw)
        if amount <= 0 or (opt in (b"ex", b"exat") and amount > INT64_MAX // 1000):
            raise _expire_time_error("set")
        if opt in (b"ex", b"exat"):
            amount *= 1000
        if opt in (b"ex", b"px"):
            if amount > INT64_MAX - now_ms:
                raise _expire_time_error("set")
            return b"px", amount
        return b"pxat", amount


def set_op(session: Session, argv: list[bytes]) -> tuple[bytes, StringOp]:
    """SET with its options as the key and the operation to run on it."""
    key = check_key(session, argv[1])
    value = check_value(session, argv[2])
    if len(argv) == 3:
        return key, plain_set(value)
    opts = SetOptions.parse(argv)
    return key, _set_op(value, opts, opts.expiry_ms(wall_millis()))


def _set_op(value: bytes, opts: SetOptions | None, expiry: tuple[bytes, int] | None) -> StringOp:
    kind, amount = expiry if expiry else (b"keep" if opts and opts.keepttl else b"none", 0)
    condition = opts.condition if opts else b""
    get = b"1" if opts and opts.get else b"0"
    return StringOp("set", (value, condition, get, kind, str(amount).encode()))


@command("set", -3, flags=("write", "denyoom"), keys=(1, 1, 1), summary="Set a key's value")
async def set_(session: Session, argv: list[bytes]) -> Any:
    key = check_key(session, argv[1])
    value = check_value(session, argv[2])
    if len(argv) == 3:
        op = plain_set(value)
    else:
        opts = SetOptions.parse(argv)
        op = _set_op(value, opts, opts.expiry_ms(wall_millis()))
    return await session.server.service.atomic_update(key, op)


async def _setex(session: Session, argv: list[bytes], name: str, unit_ms: int) -> Any:
    return await session.server.service.atomic_update(*setex_op(session, argv, name, unit_ms))


def setex_op(
    session: Session, argv: list[bytes], name: str, unit_ms: int
) -> tuple[bytes, StringOp]:
    """SETEX / PSETEX as the key and the operation to run on it."""
    key = check_key(session, argv[1])
    value = check_value(session, argv[3])
    amount = int_arg(argv[2])
    if amount <= 0 or amount > INT64_MAX // unit_ms:
        raise _expire_time_error(name)
    amount *= unit_ms
    if amount > INT64_MAX - wall_millis():
        raise _expire_time_error(name)
    return key, StringOp("set", (value, b"", b"0", b"px", str(amount).encode()))


@command("setex", 4, flags=("write", "denyoom"), keys=(1, 1, 1))
async def setex(session: Session, argv: list[bytes]) -> Any:
    """Set a key's value and its time to live in seconds"""
    return await _setex(session, argv, "setex", 1000)


@command("psetex", 4, flags=("write", "denyoom"), keys=(1, 1, 1))
async def psetex(session: Session, argv: list[bytes]) -> Any:
    """Set a key's value and its time to live in milliseconds"""
    return await _setex(session, argv, "psetex", 1)


@command("getset", 3, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def getset(session: Session, argv: list[bytes]) -> Any:
    """Set a key's value and return the old one (the time to live is dropped)"""
    key = check_key(session, argv[1])
    value = check_value(session, argv[2])
    op = StringOp("set", (value, b"", b"1", b"none", b"0"))
    return await session.server.service.atomic_update(key, op)


@command("setnx", 3, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def setnx(session: Session, argv: list[bytes]) -> Any:
    """Set a key's value only if it does not exist"""
    key = check_key(session, argv[1])
    value = check_value(session, argv[2])
    op = StringOp("set", (value, b"nx", b"0", b"none", b"0"))
    return 1 if await session.server.service.atomic_update(key, op) == OK else 0


@command("getdel", 2, flags=("write", "fast"), keys=(1, 1, 1))
async def getdel(session: Session, argv: list[bytes]) -> Any:
    """Get a key's value and delete the key"""
    key = check_key(session, argv[1])
    return await session.server.service.atomic_update(key, StringOp("getdel"))


@command("mset", -3, flags=("write", "denyoom"), keys=(1, -1, 2), summary="Set several keys")
async def mset(session: Session, argv: list[bytes]) -> Any:
    if len(argv) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    # The last value of a key repeated in one MSET wins, as in Redis.
    pairs = {
        check_key(session, argv[i]): check_value(session, argv[i + 1])
        for i in range(1, len(argv), 2)
    }
    service = session.server.service
    if len(pairs) == 1:
        ((key, value),) = pairs.items()
        await service.atomic_update(key, plain_set(value))
    else:
        await asyncio.gather(
            *(service.atomic_update(key, plain_set(value)) for key, value in pairs.items())
        )
    return OK


_DEL = StringOp("del")


async def _delete(session: Session, argv: list[bytes]) -> int:
    service = session.server.service
    deleted = 0
    for key in argv[1:]:
        deleted += await service.atomic_update(check_key(session, key), _DEL)
    return deleted


@command("del", -2, flags=("write",), group="generic", keys=(1, -1, 1))
async def del_(session: Session, argv: list[bytes]) -> Any:
    """Delete keys"""
    return await _delete(session, argv)


@command("unlink", -2, flags=("write", "fast"), group="generic", keys=(1, -1, 1))
async def unlink(session: Session, argv: list[bytes]) -> Any:
    """Delete keys (the same as DEL here: a tombstone is already cheap)"""
    return await _delete(session, argv)


# ---------------------------------------------------------------------------- atomic updates


async def _incr(session: Session, key: bytes, delta: int) -> Any:
    op = StringOp("incrby", (str(delta).encode(),))
    return await session.server.service.atomic_update(check_key(session, key), op)


@command("incr", 2, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def incr(session: Session, argv: list[bytes]) -> Any:
    """Increment the integer value of a key by one"""
    return await _incr(session, argv[1], 1)


@command("decr", 2, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def decr(session: Session, argv: list[bytes]) -> Any:
    """Decrement the integer value of a key by one"""
    return await _incr(session, argv[1], -1)


@command("incrby", 3, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def incrby(session: Session, argv: list[bytes]) -> Any:
    """Increment the integer value of a key by a number"""
    return await _incr(session, argv[1], int_arg(argv[2]))


@command("decrby", 3, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def decrby(session: Session, argv: list[bytes]) -> Any:
    """Decrement the integer value of a key by a number"""
    return await _incr(session, argv[1], decrement(argv[2]))


def decrement(raw: bytes) -> int:
    """DECRBY's argument as the delta to add, with Redis's error for the one it cannot negate."""
    delta = int_arg(raw)
    if delta == -INT64_MAX - 1:
        raise RespError("ERR decrement would overflow")
    return -delta


@command("append", 3, flags=("write", "denyoom", "fast"), keys=(1, 1, 1))
async def append(session: Session, argv: list[bytes]) -> Any:
    """Append a value to a key"""
    key = check_key(session, argv[1])
    suffix = check_value(session, argv[2])
    limit = str(session.server.limits.max_value_bytes).encode()
    return await session.server.service.atomic_update(key, StringOp("append", (suffix, limit)))


_EXPIRE_CONDITIONS = (b"nx", b"xx", b"gt", b"lt")


def _expire_condition(argv: list[bytes]) -> bytes:
    seen: set[bytes] = set()
    for raw in argv[3:]:
        opt = raw.lower()
        if opt not in _EXPIRE_CONDITIONS:
            raise RespError(f"ERR Unsupported option {raw.decode('utf-8', 'replace')}")
        seen.add(opt)
    if b"nx" in seen and len(seen) > 1:
        raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"gt" in seen and b"lt" in seen:
        raise RespError("ERR GT and LT options at the same time are not compatible")
    # XX combines with GT or LT: every given condition must hold.
    return b",".join(sorted(seen))


async def _expire(session: Session, argv: list[bytes], name: str, unit_ms: int, absolute: bool):
    key, op = expire_op(session, argv, name, unit_ms, absolute)
    return await session.server.service.atomic_update(key, op)


def expire_op(
    session: Session, argv: list[bytes], name: str, unit_ms: int, absolute: bool
) -> tuple[bytes, StringOp]:
    """EXPIRE and its variants as the key and the operation to run on it."""
    condition = _expire_condition(argv)
    when = int_arg(argv[2])
    if unit_ms == 1000:
        if when > INT64_MAX // 1000 or when < (-INT64_MAX - 1) // 1000:
            raise _expire_time_error(name)
        when *= 1000
    if not absolute and when > INT64_MAX - wall_millis():
        raise _expire_time_error(name)
    op = StringOp("expire", (b"abs" if absolute else b"rel", str(when).encode(), condition))
    return check_key(session, argv[1]), op


@command("expire", -3, flags=("write", "fast"), group="generic", keys=(1, 1, 1))
async def expire(session: Session, argv: list[bytes]) -> Any:
    """Set a key's time to live in seconds"""
    return await _expire(session, argv, "expire", 1000, absolute=False)


@command("pexpire", -3, flags=("write", "fast"), group="generic", keys=(1, 1, 1))
async def pexpire(session: Session, argv: list[bytes]) -> Any:
    """Set a key's time to live in milliseconds"""
    return await _expire(session, argv, "pexpire", 1, absolute=False)


@command("expireat", -3, flags=("write", "fast"), group="generic", keys=(1, 1, 1))
async def expireat(session: Session, argv: list[bytes]) -> Any:
    """Set a key's expiry as a UNIX timestamp in seconds"""
    return await _expire(session, argv, "expireat", 1000, absolute=True)


@command("pexpireat", -3, flags=("write", "fast"), group="generic", keys=(1, 1, 1))
async def pexpireat(session: Session, argv: list[bytes]) -> Any:
    """Set a key's expiry as a UNIX timestamp in milliseconds"""
    return await _expire(session, argv, "pexpireat", 1, absolute=True)


@command("persist", 2, flags=("write", "fast"), group="generic", keys=(1, 1, 1))
async def persist(session: Session, argv: list[bytes]) -> Any:
    """Remove a key's time to live"""
    key = check_key(session, argv[1])
    return await session.server.service.atomic_update(key, StringOp("persist"))


# ---------------------------------------------------------------------------- local keyspace


@command("dbsize", 1, flags=("readonly", "fast"), group="server")
async def dbsize(session: Session, argv: list[bytes]) -> Any:
    """Number of keys stored on this node"""
    return session.server.service.local_count()


def glob_to_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Redis glob syntax: * ? [abc] [^a] [a-z] and backslash escapes."""
    out = bytearray()
    i = 0
    while i < len(pattern):
        c = pattern[i : i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif c == b"[":
            end = pattern.find(b"]", i + 2 if pattern[i + 1 : i + 2] == b"^" else i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                negate = body[:1] == b"^"
                if negate:
                    body = body[1:]
                escaped = re.sub(rb"([\]\[\\^])", rb"\\\1", body)
                out += b"[" + (b"^" if negate else b"") + escaped + b"]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(bytes(out) + rb"\Z", re.DOTALL)


@command("scan", -2, flags=("readonly",), group="generic")
async def scan(session: Session, argv: list[bytes]) -> Any:
    """Iterate this node's local keys with a cursor"""
    server = session.server
    try:
        cursor = int(argv[1])
    except ValueError:
        raise RespError("ERR invalid cursor") from None
    count, match, type_ok = 10, None, True
    i = 2
    while i < len(argv):
        opt = argv[i].lower()
        if i + 1 >= len(argv):
            raise SYNTAX_ERROR
        if opt == b"count":
            count = int_arg(argv[i + 1])
            if count < 1:
                raise SYNTAX_ERROR
        elif opt == b"match":
            match = glob_to_regex(argv[i + 1])
        elif opt == b"type":
            type_ok = argv[i + 1].lower() == b"string"
        else:
            raise SYNTAX_ERROR
        i += 2
    if cursor < 0:
        raise RespError("ERR invalid cursor")
    after = None
    if cursor:
        after = server.cursors.get(cursor)
        if after is None:
            raise RespError("ERR invalid cursor (unknown or expired; restart the scan at 0)")
    # COUNT is a hint in Redis too; the cap bounds what one reply can hold in memory.
    count = min(count, SCAN_COUNT_MAX)
    items = server.service.local_items(after, count)
    next_cursor = server.cursors.add(items[-1][0]) if len(items) == count else 0
    keys = (
        [
            key
            for key, _ in items
            if (match is None or match.match(key)) and not key.startswith(RESERVED_PREFIX)
        ]
        if type_ok
        else []
    )
    return [str(next_cursor).encode(), keys]


@command("type", 2, flags=("readonly", "fast"), group="generic", keys=(1, 1, 1))
async def type_(session: Session, argv: list[bytes]) -> Any:
    """The type of a key's value: string (the only type LimeDB has), or none"""
    result = await session.server.service.get(check_key(session, argv[1]))
    return Status("none") if result.value is None else Status("string")


@command("keys", 2, flags=("readonly",), group="generic")
async def keys(session: Session, argv: list[bytes]) -> Any:
    """Every key of the whole cluster that matches a pattern (expensive: scans every node)"""
    pattern = glob_to_regex(argv[1])
    found = await session.server.service.cluster_keys(
        lambda key: pattern.match(key) is not None and not key.startswith(RESERVED_PREFIX)
    )
    return sorted(found)
