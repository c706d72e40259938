"""Blocked bloom filters: all probe bits of a key fall in one 64-bit word.

A key is hashed once per lookup (XXH3-64). The low bits pick a word, the high bits build a mask
of up to six bits (three table lookups), so checking one more filter costs one index and one AND.
Every filter has a power-of-two number of words, which lets the engine-wide `GlobalFilter` absorb
a file's filter by tiling or folding it with big-integer ORs instead of re-hashing its keys.
"""

from __future__ import annotations

from array import array

import xxhash

key_hash = xxhash.xxh3_64_intdigest

MAX_INDEX_BITS = 28  # word index uses bits 0..27; the mask uses bits 28..63
MASK_TABLE = tuple((1 << (i & 63)) | (1 << (i >> 6)) for i in range(4096))


def probe_mask(h: int) -> int:
    t = MASK_TABLE
    return t[(h >> 28) & 4095] | t[(h >> 40) & 4095] | t[(h >> 52) & 4095]


def words_for(keys: int, bits_per_key: int) -> int:
    """Smallest power of two number of 64-bit words giving at least `bits_per_key` per key."""
    need = max(1, (keys * bits_per_key + 63) // 64)
    n = 1
    while n < need and n < (1 << MAX_INDEX_BITS):
        n <<= 1
    return n


def build(hashes: list[int], bits_per_key: int) -> array:
    n = words_for(len(hashes), bits_per_key)
    words = [0] * n
    m = n - 1
    t = MASK_TABLE
    for h in hashes:
        words[h & m] |= t[(h >> 28) & 4095] | t[(h >> 40) & 4095] | t[(h >> 52) & 4095]
    return array("Q", words)


def may_contain(words: array, h: int) -> bool:
    mask = probe_mask(h)
    return words[h & (len(words) - 1)] & mask == mask


def resize(words: array, n: int) -> int:
    """The filter re-shaped to `n` words as a little-endian big integer (tiled or folded)."""
    have = len(words)
    raw = words.tobytes()
    if have == n:
        return int.from_bytes(raw, "little")
    if have < n:
        return int.from_bytes(raw * (n // have), "little")
    chunk = n * 8
    acc = 0
    for off in range(0, len(raw), chunk):
        acc |= int.from_bytes(raw[off : off + chunk], "little")
    return acc


class GlobalFilter:
    """The OR of every SSTable's filter: with a few tables a missing key costs one probe in total.

    A key present in any file passes this filter (tiling and folding keep every bit a file's
    filter would test). Its weakness, measured: a tiled filter keeps its own density (about a
    third of its bits set), so the OR of a dozen or more tables is nearly saturated and passes
    almost every key; the per-table filters then do the work. Building it from the key hashes
    at its own resolution would fix that; tables do not store their hashes yet.
    """

    __slots__ = ("words", "mask", "keys", "stale")

    def __init__(self, nwords: int = 1024) -> None:
        self.words = array("Q", bytes(8 * nwords))
        self.mask = nwords - 1
        self.keys = 0
        self.stale = 0

    @classmethod
    def from_filters(cls, filters: list[tuple[array, int]], bits_per_key: int = 16) -> GlobalFilter:
        total = sum(k for _, k in filters)
        g = cls(max(1024, words_for(total, bits_per_key)))
        g.keys = total
        n = g.mask + 1
        acc = 0
        for words, _ in filters:
            acc |= resize(words, n)
        g.words = array("Q", acc.to_bytes(8 * n, "little"))
        return g

    def with_filter(self, words: array, keys: int) -> GlobalFilter:
        """A new global filter that also covers one more file (readers keep the old one)."""
        n = self.mask + 1
        g = GlobalFilter.__new__(GlobalFilter)
        acc = int.from_bytes(self.words.tobytes(), "little") | resize(words, n)
        g.words = array("Q", acc.to_bytes(8 * n, "little"))
        g.mask = self.mask
        g.keys = self.keys + keys
        g.stale = self.stale
        return g

    def needs_rebuild(self, live_keys: int, bits_per_key: int = 16) -> bool:
        n = self.mask + 1
        return n * 64 < live_keys * bits_per_key // 2 or (
            self.keys > 2 * max(live_keys, 1) and n > 1024
        )
