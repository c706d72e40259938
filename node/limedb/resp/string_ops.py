"""The Redis string commands' read-modify-write semantics, as operations the cluster runs.

Each operation (`incrby`, `set` with NX/XX/GET/KEEPTTL, `del`, `getdel`, `append`, `expire`,
`persist`) is a pure function of the key's current value and the clock that decides what to
write and what to answer. `StringOp` names one with its byte arguments, so the cluster can
forward it to the key's primary and run it there under the key's lock (limedb.cluster.atomic,
which knows nothing of what an operation means); docs/redis.md states the guarantee.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from limedb.cluster.atomic import Action, OperationRefused, Outcome
from limedb.cluster.service import InvalidRequest, ReadResult
from limedb.resp.encoding import OK, Status

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

NOT_AN_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"


class CommandError(OperationRefused):
    """A Redis-visible error; the message is the whole error line, prefix included."""


Reply = int | bytes | Status | None


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
    """A Redis integer argument (of a command or an operation), or Redis's error for it."""
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
class StringOp:
    """A Redis string operation with its arguments: calling it decides the outcome for one
    value. It is a `limedb.cluster.atomic.ReadModifyWrite`, and the class itself is the
    `OperationDecoder` a primary rebuilds forwarded operations with."""

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

    def encode_reply(self, reply: Reply) -> bytes:
        return encode_reply(reply)

    def decode_reply(self, data: bytes) -> Reply:
        return decode_reply(data)


def plain_set(value: bytes) -> StringOp:
    """SET with no option: a blind write (no read at the primary, `StringOp.blind`)."""
    return StringOp("set", (value, b"", b"0", b"none", b"0"))


# ---------------------------------------------------------------------------- reply wire format

_INT = struct.Struct("!q")
_REPLY_NONE, _REPLY_INT, _REPLY_BYTES, _REPLY_STATUS = b"\x00", b"\x01", b"\x02", b"\x03"


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
