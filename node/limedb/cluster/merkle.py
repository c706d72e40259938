"""Merkle trees over one token range of one replica, so that two replicas find the token
sub-ranges where their data differs by exchanging hashes instead of data.

A tree has a fixed depth and splits the range's tokens into 2**depth equal leaves, so two
replicas that build a tree for the same range and depth compare leaf by leaf whatever data
they hold. A leaf hashes the versions it holds in storage-key order (key, timestamp,
tombstone, expiry, value), which is the order a range scan yields; an empty leaf hashes to
zeros, and so does a node whose children are both empty, so an empty range has a zero root.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import xxhash

from limedb.cluster.keys import MAX_TOKEN, TOKEN_BYTES, token_prefix

DEFAULT_DEPTH = 10
MAX_DEPTH = 20
HASH_BYTES = 16
EMPTY = bytes(HASH_BYTES)

_header = struct.Struct(">I")
_fields = struct.Struct(">QBQI")
_TOMBSTONE = 1
_EXPIRES = 2


class StoredVersion(Protocol):
    """What a tree needs of a version (limedb.storage.Version has it)."""

    ts: int
    value: bytes
    tombstone: bool
    expires_at_ms: int | None


class RangeSource(Protocol):
    """A storage engine, as far as trees are concerned."""

    def iter_range(
        self, start: bytes | None = None, end: bytes | None = None, *, include_tombstones: bool
    ) -> Iterator[tuple[bytes, StoredVersion]]: ...


def version_bytes(skey: bytes, version: StoredVersion) -> bytes:
    """The bytes a version contributes to its leaf hash."""
    flags = (_TOMBSTONE if version.tombstone else 0) | (
        _EXPIRES if version.expires_at_ms is not None else 0
    )
    value = b"" if version.tombstone else version.value
    return b"".join(
        (
            _header.pack(len(skey)),
            skey,
            _fields.pack(version.ts, flags, version.expires_at_ms or 0, len(value)),
            value,
        )
    )


def storage_bounds(start: int, end: int) -> tuple[bytes, bytes | None]:
    """Storage keys [lo, hi) holding the tokens start..end (hi None: to the end of the space)."""
    return token_prefix(start), None if end == MAX_TOKEN else token_prefix(end + 1)


def _combine(left: bytes, right: bytes) -> bytes:
    if left == EMPTY and right == EMPTY:
        return EMPTY
    return xxhash.xxh3_128_digest(left + right)


def _check_range(start: int, end: int, depth: int) -> None:
    if not 0 <= start <= end <= MAX_TOKEN:
        raise ValueError(f"token range {start}..{end} must satisfy 0 <= start <= end < 2**64")
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth {depth} outside 0..{MAX_DEPTH}")


@dataclass(frozen=True, eq=False)
class MerkleTree:
    """The tree of tokens start..end (inclusive, not wrapping) at `depth`.

    `leaves[i]` is the hash of leaf i and `counts[i]` how many versions it holds (an estimate
    of what streaming it costs). `levels[0]` is `(root,)` and `levels[depth]` the leaves.
    """

    start: int
    end: int
    depth: int
    leaves: tuple[bytes, ...]
    counts: tuple[int, ...]
    levels: tuple[tuple[bytes, ...], ...] = field(init=False, default=(), repr=False)

    def __post_init__(self) -> None:
        _check_range(self.start, self.end, self.depth)
        width = 1 << self.depth
        if len(self.leaves) != width or len(self.counts) != width:
            raise ValueError(f"a tree of depth {self.depth} has {width} leaves")
        if any(len(h) != HASH_BYTES for h in self.leaves):
            raise ValueError(f"leaf hashes are {HASH_BYTES} bytes")
        levels = [self.leaves]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append(tuple(_combine(below[i], below[i + 1]) for i in range(0, len(below), 2)))
        object.__setattr__(self, "levels", tuple(reversed(levels)))

    @property
    def root(self) -> bytes:
        return self.levels[0][0]

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def key_count(self) -> int:
        return sum(self.counts)

    def leaf_of(self, token: int) -> int:
        if not self.start <= token <= self.end:
            raise ValueError(f"token {token} outside {self.start}..{self.end}")
        return ((token - self.start) << self.depth) // self.size

    def leaf_range(self, index: int) -> tuple[int, int] | None:
        """Tokens lo..hi of leaf `index`; None for a leaf with no tokens (range < 2**depth)."""
        width = 1 << self.depth
        lo = self.start + -(-(index * self.size) // width)
        hi = self.start + -(-((index + 1) * self.size) // width) - 1
        return (lo, hi) if lo <= hi else None

    def same_shape(self, other: MerkleTree) -> bool:
        return (self.start, self.end, self.depth) == (other.start, other.end, other.depth)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        entries: Iterable[tuple[bytes, StoredVersion]],
        start: int,
        end: int,
        depth: int = DEFAULT_DEPTH,
        *,
        purged_before_ts: int = 0,
    ) -> MerkleTree:
        """Hash `entries` ((storage_key, version) in storage-key order, all inside the range).

        Tombstones older than `purged_before_ts` (an HLC timestamp) are left out: compaction
        drops them after a grace period, at different times on different replicas, and a
        difference only in what was already purged needs no repair.
        """
        _check_range(start, end, depth)
        width = 1 << depth
        size = end - start + 1
        hashers: dict[int, xxhash.xxh3_128] = {}
        counts = [0] * width
        previous = b""
        for skey, version in entries:
            if version.tombstone and version.ts < purged_before_ts:
                continue
            token = int.from_bytes(skey[:TOKEN_BYTES], "big")
            if not start <= token <= end:
                raise ValueError(f"storage key {skey!r} (token {token}) outside {start}..{end}")
            if skey <= previous:
                raise ValueError("entries must come in strictly increasing storage-key order")
            previous = skey
            leaf = ((token - start) << depth) // size
            hasher = hashers.get(leaf)
            if hasher is None:
                hasher = hashers[leaf] = xxhash.xxh3_128()
            hasher.update(version_bytes(skey, version))
            counts[leaf] += 1
        leaves = [EMPTY] * width
        for leaf, hasher in hashers.items():
            leaves[leaf] = hasher.digest()
        return cls(start, end, depth, tuple(leaves), tuple(counts))

    @classmethod
    def from_storage(
        cls,
        engine: RangeSource,
        start: int,
        end: int,
        depth: int = DEFAULT_DEPTH,
        *,
        purged_before_ts: int = 0,
    ) -> MerkleTree:
        """The tree of one replica's data in start..end: one range scan, tombstones included."""
        lo, hi = storage_bounds(start, end)
        entries = engine.iter_range(lo, hi, include_tombstones=True)
        return cls.build(entries, start, end, depth, purged_before_ts=purged_before_ts)

    # ------------------------------------------------------------------ the wire

    def to_record(self) -> dict:
        """JSON-able: the leaves and counts (inner nodes are recomputed by the receiver)."""
        return {
            "start": self.start,
            "end": self.end,
            "depth": self.depth,
            "leaves": b"".join(self.leaves).hex(),
            "counts": list(self.counts),
        }

    @classmethod
    def from_record(cls, record: dict) -> MerkleTree:
        try:
            depth = int(record["depth"])
            raw = bytes.fromhex(record["leaves"])
            if not 0 <= depth <= MAX_DEPTH or len(raw) != HASH_BYTES << depth:
                raise ValueError(f"{len(raw)} bytes of leaves for depth {depth}")
            leaves = tuple(raw[i : i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES))
            counts = tuple(int(c) for c in record["counts"])
            return cls(int(record["start"]), int(record["end"]), depth, leaves, counts)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad Merkle tree record: {exc}") from exc


def differing_leaves(a: MerkleTree, b: MerkleTree) -> list[int]:
    """Indexes of the leaves whose hashes differ, descending only into differing subtrees."""
    if not a.same_shape(b):
        raise ValueError(
            f"trees of different shapes cannot be compared: {a.start}..{a.end} depth {a.depth} "
            f"vs {b.start}..{b.end} depth {b.depth}"
        )
    found: list[int] = []
    stack = [(0, 0)]
    while stack:
        level, index = stack.pop()
        if a.levels[level][index] == b.levels[level][index]:
            continue
        if level == a.depth:
            found.append(index)
        else:
            stack.extend(((level + 1, 2 * index + 1), (level + 1, 2 * index)))
    return sorted(found)


def diff(a: MerkleTree, b: MerkleTree) -> list[tuple[int, int]]:
    """Token ranges (lo, hi inclusive) where `a` and `b` differ; adjacent leaves are merged,
    so each range is one stream request."""
    ranges: list[tuple[int, int]] = []
    for index in differing_leaves(a, b):
        bounds = a.leaf_range(index)
        if bounds is None:  # cannot happen: a leaf without tokens holds no versions
            continue
        lo, hi = bounds
        if ranges and ranges[-1][1] + 1 == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges
