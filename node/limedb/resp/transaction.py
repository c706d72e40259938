"""MULTI / EXEC / DISCARD / WATCH / UNWATCH: Redis transactions, run at the keys' one primary.

Between MULTI and EXEC the listener queues commands (answering QUEUED; an unknown command or a
wrong arity answers its error and makes EXEC answer EXECABORT, as in Redis). EXEC turns every
queued keyed command into operations on its keys (`Plan`: steps `(key, StringOp)` and how to
combine their replies into the command's reply) and hands them, with the watched versions, to
`KeyValueService.atomic_batch`, which runs them in order at the one primary of all the keys
under all their locks (limedb.cluster.transaction), or refuses with CROSSSLOT when the keys
have different primaries. Commands without keys (PING, ECHO, DBSIZE, INFO, ...) run on this
node, after the keyed ones, their replies in place. WATCH remembers each key's version
timestamp (0 for an absent key); EXEC answers a null array when one of them moved.
docs/redis.md ("Transactions") states the guarantee.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limedb.cluster.atomic import OperationRefused
from limedb.cluster.transaction import ManyPrimaries
from limedb.resp.commands import COMMANDS, command
from limedb.resp.encoding import NULL_ARRAY, OK, RespError, Status
from limedb.resp.keyspace import (
    check_key,
    check_value,
    decrement,
    expire_op,
    set_op,
    setex_op,
)
from limedb.resp.session import Session
from limedb.resp.string_ops import Reply, StringOp, int_arg, plain_set

# Commands the listener runs at once, also between MULTI and EXEC.
CONTROL = frozenset((b"multi", b"exec", b"discard", b"watch", b"quit"))
QUEUED = Status("QUEUED")
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same primary replica"


@dataclass(frozen=True, slots=True)
class Plan:
    """A keyed command as operations: its steps, and its reply from theirs (in order)."""

    steps: tuple[tuple[bytes, StringOp], ...]
    combine: Callable[[list[Reply]], Any]


def _first(replies: list[Reply]) -> Any:
    return replies[0]


def _one(key: bytes, op: StringOp, combine: Callable[[list[Reply]], Any] = _first) -> Plan:
    return Plan(((key, op),), combine)


def _each(
    session: Session, keys: list[bytes], op: StringOp, combine: Callable[[list[Reply]], Any]
) -> Plan:
    return Plan(tuple((check_key(session, key), op) for key in keys), combine)


def _ttl_seconds(replies: list[Reply]) -> int:
    remaining = replies[0]
    assert isinstance(remaining, int)
    return remaining if remaining < 0 else (remaining + 500) // 1000


def _incr(session: Session, key: bytes, delta: int) -> Plan:
    return _one(check_key(session, key), StringOp("incrby", (str(delta).encode(),)))


def _set_fixed(session: Session, argv: list[bytes], condition: bytes, get: bytes) -> Plan:
    value = check_value(session, argv[2])
    op = StringOp("set", (value, condition, get, b"none", b"0"))
    combine = (lambda r: 1 if r[0] == OK else 0) if condition == b"nx" else _first
    return _one(check_key(session, argv[1]), op, combine)


def _mset(session: Session, argv: list[bytes]) -> Plan:
    if len(argv) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    pairs = {
        check_key(session, argv[i]): check_value(session, argv[i + 1])
        for i in range(1, len(argv), 2)
    }
    steps = tuple((k, plain_set(v)) for k, v in pairs.items())
    return Plan(steps, lambda _: OK)


def _append(session: Session, argv: list[bytes]) -> Plan:
    suffix = check_value(session, argv[2])
    limit = str(session.server.limits.max_value_bytes).encode()
    return _one(check_key(session, argv[1]), StringOp("append", (suffix, limit)))


_GET, _STRLEN, _EXISTS = StringOp("get"), StringOp("strlen"), StringOp("exists")
_PTTL, _TYPE, _DEL = StringOp("pttl"), StringOp("type"), StringOp("del")

PLANNERS: dict[bytes, Callable[[Session, list[bytes]], Plan]] = {
    b"get": lambda s, a: _one(check_key(s, a[1]), _GET),
    b"mget": lambda s, a: _each(s, a[1:], _GET, list),
    b"exists": lambda s, a: _each(s, a[1:], _EXISTS, sum),
    b"strlen": lambda s, a: _one(check_key(s, a[1]), _STRLEN),
    b"pttl": lambda s, a: _one(check_key(s, a[1]), _PTTL),
    b"ttl": lambda s, a: _one(check_key(s, a[1]), _PTTL, _ttl_seconds),
    b"type": lambda s, a: _one(check_key(s, a[1]), _TYPE),
    b"set": lambda s, a: _one(*set_op(s, a)),
    b"setex": lambda s, a: _one(*setex_op(s, a, "setex", 1000)),
    b"psetex": lambda s, a: _one(*setex_op(s, a, "psetex", 1)),
    b"getset": lambda s, a: _set_fixed(s, a, b"", b"1"),
    b"setnx": lambda s, a: _set_fixed(s, a, b"nx", b"0"),
    b"getdel": lambda s, a: _one(check_key(s, a[1]), StringOp("getdel")),
    b"mset": _mset,
    b"del": lambda s, a: _each(s, a[1:], _DEL, sum),
    b"unlink": lambda s, a: _each(s, a[1:], _DEL, sum),
    b"incr": lambda s, a: _incr(s, a[1], 1),
    b"decr": lambda s, a: _incr(s, a[1], -1),
    b"incrby": lambda s, a: _incr(s, a[1], int_arg(a[2])),
    b"decrby": lambda s, a: _incr(s, a[1], decrement(a[2])),
    b"append": _append,
    b"expire": lambda s, a: _one(*expire_op(s, a, "expire", 1000, absolute=False)),
    b"pexpire": lambda s, a: _one(*expire_op(s, a, "pexpire", 1, absolute=False)),
    b"expireat": lambda s, a: _one(*expire_op(s, a, "expireat", 1000, absolute=True)),
    b"pexpireat": lambda s, a: _one(*expire_op(s, a, "pexpireat", 1, absolute=True)),
    b"persist": lambda s, a: _one(check_key(s, a[1]), StringOp("persist")),
}


def plan_of(session: Session, argv: list[bytes]) -> Plan | RespError | None:
    """The plan of a queued keyed command, its error (bad arguments), or None for a command
    without keys, which runs on this node."""
    name = argv[0].lower()
    planner = PLANNERS.get(name)
    if planner is None:
        if COMMANDS[name].first_key:
            return RespError(f"ERR '{name.decode()}' is not supported inside MULTI")
        return None
    try:
        return planner(session, argv)
    except RespError as exc:
        return exc
    except OperationRefused as exc:
        return RespError(str(exc))


async def _run_here(session: Session, argv: list[bytes]) -> Any:
    """A keyless queued command, run as the listener would run it outside a transaction."""
    try:
        result = COMMANDS[argv[0].lower()].handler(session, argv)
        if hasattr(result, "__await__"):
            result = await result
        return result
    except RespError as exc:
        return exc
    except OperationRefused as exc:
        return RespError(str(exc))


def queue(session: Session, argv: list[bytes]) -> Status:
    """Called by the listener for a command between MULTI and EXEC (not a CONTROL one)."""
    assert session.multi is not None
    session.multi.append(argv)
    return QUEUED


@command("multi", 1, flags=("fast",), group="transactions")
def multi(session: Session, argv: list[bytes]) -> Any:
    """Mark the start of a transaction block"""
    if session.multi is not None:
        raise RespError("ERR MULTI calls can not be nested")
    session.multi = []
    session.multi_dirty = False
    return OK


@command("discard", 1, flags=("fast",), group="transactions")
def discard(session: Session, argv: list[bytes]) -> Any:
    """Discard all commands issued after MULTI"""
    if session.multi is None:
        raise RespError("ERR DISCARD without MULTI")
    session.multi = None
    session.watched = {}
    return OK


@command("watch", -2, flags=("fast",), group="transactions", keys=(1, -1, 1))
async def watch(session: Session, argv: list[bytes]) -> Any:
    """Watch keys: the next EXEC aborts if one of them changed meanwhile"""
    if session.multi is not None:
        raise RespError("ERR WATCH inside MULTI is not allowed")
    service = session.server.service
    for key in argv[1:]:
        key = check_key(session, key)
        if key not in session.watched:
            session.watched[key] = (await service.get(key)).ts
    return OK


@command("unwatch", 1, flags=("fast",), group="transactions")
def unwatch(session: Session, argv: list[bytes]) -> Any:
    """Forget every watched key"""
    session.watched = {}
    return OK


@command("exec", 1, flags=(), group="transactions")
async def exec_(session: Session, argv: list[bytes]) -> Any:
    """Execute all commands issued after MULTI"""
    queued, dirty, watched = session.multi, session.multi_dirty, session.watched
    if queued is None:
        raise RespError("ERR EXEC without MULTI")
    session.multi, session.multi_dirty, session.watched = None, False, {}
    if dirty:
        raise RespError(EXECABORT)
    plans = [plan_of(session, request) for request in queued]
    steps = [step for plan in plans if isinstance(plan, Plan) for step in plan.steps]
    try:
        results = await session.server.service.atomic_batch(steps, list(watched.items()))
    except ManyPrimaries as exc:
        raise RespError(f"{CROSSSLOT} ({exc})") from None
    if results is None:
        return NULL_ARRAY
    replies: list[Any] = []
    done = 0
    for request, plan in zip(queued, plans, strict=True):
        if isinstance(plan, RespError):
            replies.append(plan)
        elif plan is None:
            replies.append(await _run_here(session, request))
        else:
            part = results[done : done + len(plan.steps)]
            done += len(plan.steps)
            error = next((r for r in part if isinstance(r, OperationRefused)), None)
            replies.append(RespError(str(error)) if error is not None else plan.combine(part))
    return replies
