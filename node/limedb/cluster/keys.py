"""Storage keys: token(8 bytes, big-endian XXH64 of the user key) + the user key.

Ordering storage by token makes every ring range a contiguous range on disk, so migration,
repair and cleanup stream ranges instead of scanning every key.
"""

from __future__ import annotations

import xxhash

_xxh64 = xxhash.xxh64_intdigest
TOKEN_BYTES = 8
MAX_TOKEN = (1 << 64) - 1


def split_wrapping(start: int, end: int) -> list[tuple[int, int]]:
    """A ring range start..end (wrapping when start > end) as non-wrapping pieces."""
    if start <= end:
        return [(start, end)]
    return [(start, MAX_TOKEN), (0, end)]


def token_of(key: bytes) -> int:
    """The ring position of a user key (XXH64, seed 0, as the original LimeDB)."""
    return _xxh64(key)


def storage_key(key: bytes) -> bytes:
    return _xxh64(key).to_bytes(8, "big") + key


def user_key(skey: bytes) -> bytes:
    return skey[TOKEN_BYTES:]


def token_prefix(token: int) -> bytes:
    """The smallest storage key with this token: the start of a token range scan."""
    return token.to_bytes(8, "big")
