"""Blocked bloom filters: all probe bits of a key fall in one 64-bit word.

A key is hashed once per lookup (XXH3-64). The low bits pick a word, the high bits build a mask
of up to six bits (three table lookups), so checking one more filter costs one index and one AND.
Every filter has a power-of-two number of words, so filters of different sizes combine with
big-integer ORs (tiling a smaller one, folding a larger one).
"""

from __future__ import annotations

from array import array

import xxhash

key_hash = xxhash.xxh3_64_intdigest

MAX_INDEX_BITS = 28  # word index uses bits 0..27; the mask uses bits 28..63
GLOBAL_BITS_PER_KEY = 16  # the engine-wide filter is rebuilt below this (sized for 32)
MASK_TABLE = tuple((1 << (i & 63)) | (1 << (i >> 6)) for i in range(4096))


def probe_mask(h: int) -> int:
    """The probe bits of hash `h`: table entries of its bits 28-39, 40-51 and 52-63."""
    g = h >> 28
    t = MASK_TABLE
    return t[g & 4095] | t[(g >> 12) & 4095] | t[g >> 24]  # h < 2**64: g >> 24 < 4096


def words_for(keys: int, bits_per_key: int) -> int:
    """Smallest power of two number of 64-bit words giving at least `bits_per_key` per key."""
    need = max(1, (keys * bits_per_key + 63) // 64)
    n = 1
    while n < need and n < (1 << MAX_INDEX_BITS):
        n <<= 1
    return n


def build(hashes: list[int], bits_per_key: int) -> array:
    return build_words(hashes, words_for(len(hashes), bits_per_key))


def may_contain(words: array, h: int) -> bool:
    mask = probe_mask(h)
    return words[h & (len(words) - 1)] & mask == mask


def build_words(hashes: list[int] | map, nwords: int) -> array:
    """A filter of exactly `nwords` (a power of two) words holding these key hashes."""
    # An array, not a list of ints: the loop's stores then convert to machine words instead of
    # keeping one int object per word (~20% less per key than a list converted at the end).
    words = array("Q", bytes(8 * nwords))
    add_hashes(words, hashes)
    return words


def add_hashes(words: array, hashes: list[int] | map) -> None:
    """Set the probe bits of these key hashes in `words` (a power-of-two number of words)."""
    m = len(words) - 1
    t = MASK_TABLE
    for h in hashes:
        g = h >> 28
        words[h & m] |= t[g & 4095] | t[(g >> 12) & 4095] | t[g >> 24]


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


def fold(words: array, n: int) -> array:
    """The same filter with `n` words (n a power of two no larger than len(words)).

    Word j of the result ORs every word whose index is j modulo n, which is exactly the filter
    that building with n words directly would give, at C speed.
    """
    if len(words) == n:
        return words
    return array("Q", resize(words, n).to_bytes(8 * n, "little"))


def build_pair(hashes: list[int], bits_per_key: int, other_words: int) -> tuple[array, array]:
    """(filter sized for `bits_per_key`, same keys at `other_words` words) with one pass."""
    return split_pair(
        build_words(hashes, pair_words(len(hashes), bits_per_key, other_words)),
        len(hashes),
        bits_per_key,
        other_words,
    )


def pair_words(keys: int, bits_per_key: int, other_words: int) -> int:
    """The size to build a filter at that `split_pair` folds into both of its filters."""
    return max(words_for(keys, bits_per_key), other_words)


def split_pair(big: array, keys: int, bits_per_key: int, other_words: int) -> tuple[array, array]:
    """`build_pair`'s result from a filter of `keys` keys built at `pair_words` words. Built
    smaller (more keys than it was sized for), both come out at most its size: denser, as
    correct."""
    n = min(words_for(keys, bits_per_key), len(big))
    return fold(big, n), fold(big, min(other_words, len(big)))


_ALL_ONES = (1 << 64) - 1


class GlobalFilter:
    """One filter over the keys of every table, built from their hashes at its own size.

    Sized for the whole database, so a missing key usually costs one probe in total. It must
    hold every key of every table the reader can see (the engine adds each flushed table's
    hashes before publishing the table; compaction output keys are a subset of its inputs').
    Until it has been built (after open, or when it grew too dense) it is a pass-through: one
    all-ones word that lets every key on to the per-table filters.
    """

    __slots__ = ("words", "mask", "keys", "ready")

    def __init__(self, words: array, keys: int, ready: bool) -> None:
        self.words = words
        self.mask = len(words) - 1
        self.keys = keys
        self.ready = ready

    @classmethod
    def passthrough(cls) -> GlobalFilter:
        return cls(array("Q", [_ALL_ONES]), 0, False)

    @staticmethod
    def size_for(keys: int) -> int:
        """Words for `keys` keys with room to double before the filter counts as too dense."""
        return max(1024, words_for(2 * max(keys, 1), GLOBAL_BITS_PER_KEY))

    @classmethod
    def from_hashes(cls, hashes: list[int] | map, keys: int, nwords: int) -> GlobalFilter:
        return cls(build_words(hashes, nwords), keys, True)

    def with_words(self, words: array, keys: int) -> GlobalFilter:
        """This filter plus another filter of the same hash layout (tiled or folded to fit).

        A pass-through stays one: it cannot vouch for anything yet.
        """
        if not self.ready:
            return self
        n = self.mask + 1
        acc = int.from_bytes(self.words.tobytes(), "little") | resize(words, n)
        return GlobalFilter(array("Q", acc.to_bytes(8 * n, "little")), self.keys + keys, True)

    def too_dense(self) -> bool:
        return self.ready and self.keys * GLOBAL_BITS_PER_KEY > (self.mask + 1) * 64
