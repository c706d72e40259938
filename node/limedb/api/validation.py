"""Request limits and key decoding shared by every route (keys 1..N bytes of UTF-8, bounded values).

Keys in a path arrive percent-encoded; they are decoded from the raw path (not the framework's
already-decoded path) so that `%2F`, `%3F`, `%23`, `%25`, spaces and non-ASCII round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from limedb.api.errors import ApiError
from limedb.auth.records import is_reserved
from limedb.cluster.service import Consistency
from limedb.config import default

MAX_TTL_SECONDS = 10 * 365 * 86400


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_bytes: int = default("max_key_bytes")
    max_value_bytes: int = default("max_value_bytes")
    max_batch_items: int = default("max_batch_items")

    @property
    def max_json_body(self) -> int:
        # JSON may escape every character as \\uXXXX: six bytes per byte of key or value.
        return 6 * (self.max_key_bytes + self.max_value_bytes) + 4096

    def max_batch_body(self) -> int:
        return self.max_batch_items * self.max_json_body


def check_key(key: bytes, limits: Limits) -> bytes:
    if not key:
        raise ApiError(400, "key must not be empty")
    if len(key) > limits.max_key_bytes:
        raise ApiError(400, f"key is {len(key)} bytes; the limit is {limits.max_key_bytes} bytes")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "key must be valid UTF-8") from None
    if is_reserved(key):
        raise ApiError(403, "keys that start with NUL + 'limedb/' are LimeDB's own (users)")
    return key


def check_value(value: bytes, limits: Limits) -> bytes:
    if len(value) > limits.max_value_bytes:
        raise ApiError(
            413, f"value is {len(value)} bytes; the limit is {limits.max_value_bytes} bytes"
        )
    return value


def key_from_raw_path(raw_path: bytes, prefix_len: int, limits: Limits) -> bytes:
    """The user key after a route prefix such as b"/api/v1/get/", percent-decoded."""
    raw = raw_path[prefix_len:]
    return check_key(unquote_to_bytes(raw) if b"%" in raw else raw, limits)


def key_from_text(key: object, limits: Limits, field: str = "key") -> bytes:
    if not isinstance(key, str):
        raise ApiError(400, f"{field} must be a string")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{field} must be valid UTF-8 (no lone surrogates)") from None
    return check_key(encoded, limits)


def value_from_text(value: object, limits: Limits) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, "value must be a string")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "value must be valid UTF-8 (no lone surrogates)") from None
    return check_value(encoded, limits)


def query_param(query_string: bytes, name: bytes) -> bytes | None:
    """The decoded value of one query parameter; every other parameter is ignored."""
    if name not in query_string:
        return None
    for part in query_string.split(b"&"):
        key, _, raw = part.partition(b"=")
        if key == name:
            return unquote_to_bytes(raw.replace(b"+", b" "))
    return None


def parse_ttl(query_string: bytes) -> int | None:
    """`?ttl=seconds` (positive, fractional allowed) in milliseconds."""
    raw = query_param(query_string, b"ttl")
    if raw is None:
        return None
    try:
        seconds = float(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "ttl must be a number of seconds") from None
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ApiError(400, f"ttl must be > 0 and <= {MAX_TTL_SECONDS} seconds")
    return max(1, round(seconds * 1000))


def parse_consistency(query_string: bytes) -> Consistency | None:
    """`?consistency=one|quorum|all`; absent means the node's configured default."""
    raw = query_param(query_string, b"consistency")
    if raw is None:
        return None
    try:
        return Consistency(raw.decode("ascii", "replace").lower())
    except ValueError:
        raise ApiError(400, "consistency must be one of one, quorum, all") from None
