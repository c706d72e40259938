"""RESP2/RESP3 reply encoding: Python values to wire bytes for the protocol a client chose.

bytes -> bulk string, None -> null, int -> integer, `Status` -> simple string, `RespError` ->
error, list -> array, dict -> map (a flat array in RESP2), `Verbatim` -> verbatim string (bulk
in RESP2). The protocol version is per connection (HELLO 3 switches it).
"""

from __future__ import annotations


class Status(str):
    """A simple-string reply such as OK (as opposed to a bulk string)."""


OK = Status("OK")


class RespError(Exception):
    """An error reply; `line` is the whole error text, prefix included (e.g. `ERR syntax error`)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        # Redis sanitizes error lines: a CR or LF would end the reply early.
        self.line = line.replace("\r", " ").replace("\n", " ")


class Verbatim(bytes):
    """Human-readable text (INFO): RESP3 verbatim string `txt`, RESP2 bulk string."""


class _NullArray:
    """A null array (`*-1` in RESP2, `_` in RESP3): EXEC's reply to an aborted transaction."""

    __slots__ = ()


NULL_ARRAY = _NullArray()

OK_REPLY = b"+OK\r\n"
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
_SMALL_INTS = [b":%d\r\n" % i for i in range(-1, 1025)]


def encode_int(value: int) -> bytes:
    if -1 <= value <= 1023:
        return _SMALL_INTS[value + 1]
    return b":%d\r\n" % value


def encode_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode(value: object, proto: int, out: list[bytes]) -> None:
    """Append the encoding of `value` to `out` (a list, so nested replies avoid copies)."""
    if type(value) is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif value is None:
        out.append(NULL3 if proto == 3 else NULL2)
    elif value is NULL_ARRAY:
        out.append(NULL3 if proto == 3 else b"*-1\r\n")
    elif isinstance(value, Status):
        out.append(OK_REPLY if value == "OK" else b"+%s\r\n" % value.encode())
    elif isinstance(value, bool):
        if proto == 3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(ONE if value else ZERO)
    elif isinstance(value, int):
        out.append(encode_int(value))
    elif isinstance(value, Verbatim):
        if proto == 3:
            out.append(b"=%d\r\ntxt:%s\r\n" % (len(value) + 4, value))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, RespError):
        out.append(b"-%s\r\n" % value.line.encode())
    elif isinstance(value, list | tuple):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            encode(item, proto, out)
    elif isinstance(value, dict):
        out.append(
            (b"%%%d\r\n" if proto == 3 else b"*%d\r\n") % (len(value) * (1 if proto == 3 else 2))
        )
        for key, item in value.items():
            encode(key, proto, out)
            encode(item, proto, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a RESP reply")


def encode_reply(value: object, proto: int) -> bytes:
    """The common replies without building a list; anything nested goes through `encode`."""
    if type(value) is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return NULL3 if proto == 3 else NULL2
    if type(value) is int:
        return encode_int(value)
    out: list[bytes] = []
    encode(value, proto, out)
    return b"".join(out)
