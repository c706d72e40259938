"""SSTables: immutable sorted files of data blocks, a bloom filter, a block index and a footer.

Blocks are columnar (all key lengths, then all value lengths, timestamps, flags, optional expiry
times, then the keys and the values back to back) so that decoding a block is a handful of
`struct.unpack_from` calls and one `dict(zip(...))`, not a loop over entries. docs/formats.md
describes every byte.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add, itemgetter
from typing import TypeVar

from crc32c import crc32c

from . import bloom
from .block_cache import WHOLE_ENTRY_BYTES, BlockCache
from .errors import CorruptionError
from .fs import FileSystem, RealFS
from .record import EXPIRES, TOMBSTONE, Rec, Version, to_version

_T = TypeVar("_T")

MAGIC = 0x4C494D4553535401  # "LIMESST" + 0x01
FORMAT_VERSION = 1
BLOCK_HEADER = struct.Struct("<HB")  # entry count, block flags (bit 0: expiry column present)
CRC = struct.Struct("<I")
FOOTER = struct.Struct("<QIQIQIIIQ")
FOOTER_BYTES = FOOTER.size
INDEX_HEADER = struct.Struct("<I")
META = struct.Struct("<QQQQHH")  # entries, max ts, tombstones, expiring, smallest len, largest len
MAX_KEY_BYTES = 0xFFFF
MAX_BLOCK_ENTRIES = 0xFFFF
_ENTRY_OVERHEAD = 23  # bytes per entry besides key and value (lengths, ts, flags)


def _fmt(lengths: tuple[int, ...]) -> str:
    n = len(lengths)
    if n and lengths.count(lengths[0]) == n:
        return f"{lengths[0]}s" * n
    return "".join(map("{}s".format, lengths))


def encode_block(keys: list[bytes], recs: list[Rec]) -> tuple[bytes, int, int, int]:
    """(block bytes, max ts, tombstones, expiring) for sorted keys and their records."""
    n = len(keys)
    ts, values, flag_ints, exps = zip(*recs, strict=True)
    flags = bytes(flag_ints)
    tombstones = flags.count(TOMBSTONE) + flags.count(TOMBSTONE | EXPIRES)
    expiring = flags.count(EXPIRES) + flags.count(TOMBSTONE | EXPIRES)
    parts = [
        BLOCK_HEADER.pack(n, 1 if expiring else 0),
        struct.pack(f"<{n}H", *map(len, keys)),
        struct.pack(f"<{n}I", *map(len, values)),
        struct.pack(f"<{n}Q", *ts),
        flags,
    ]
    if expiring:
        parts.append(struct.pack(f"<{n}Q", *exps))
    parts.append(b"".join(keys))
    parts.append(b"".join(values))
    return b"".join(parts), max(ts), tombstones, expiring


def decode_block(buf: bytes) -> dict[bytes, Rec]:
    """key -> record, in key order (dicts keep insertion order)."""
    unpack = struct.unpack_from
    n, bflags = BLOCK_HEADER.unpack_from(buf, 0)
    off = BLOCK_HEADER.size
    klens = unpack(f"<{n}H", buf, off)
    off += 2 * n
    vlens = unpack(f"<{n}I", buf, off)
    off += 4 * n
    ts = unpack(f"<{n}Q", buf, off)
    off += 8 * n
    flags = buf[off : off + n]
    off += n
    if bflags & 1:
        exp = unpack(f"<{n}Q", buf, off)
        off += 8 * n
    else:
        exp = repeat(0, n)
    keys = unpack(_fmt(klens), buf, off)
    off += sum(klens)
    values = unpack(_fmt(vlens), buf, off)
    return dict(zip(keys, zip(ts, values, flags, exp, strict=False), strict=False))


def decode_block_keys(buf: bytes) -> tuple[bytes, ...]:
    """The keys of a data block, in order, without decoding its records (a filter build)."""
    n, bflags = BLOCK_HEADER.unpack_from(buf, 0)
    off = BLOCK_HEADER.size
    klens = struct.unpack_from(f"<{n}H", buf, off)
    # Past the lengths, timestamps and flags (and expiry times) to the keys.
    off += (2 + 4 + 8 + 1 + (8 if bflags & 1 else 0)) * n
    return struct.unpack_from(_fmt(klens), buf, off)


@dataclass(frozen=True)
class TableMeta:
    """What the MANIFEST records about one table."""

    file_no: int
    size: int
    entries: int
    smallest: bytes
    largest: bytes


def table_name(file_no: int) -> str:
    return f"{file_no:06d}.sst"


class TableBuilder:
    """Writes one SSTable from records added in strictly increasing key order."""

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        file_no: int,
        block_bytes: int = 4096,
        bits_per_key: int = 10,
        *,
        hash_keys: bool = True,
    ) -> None:
        """`hash_keys=False`: the caller builds the keys' filter itself and hands it to
        `finish` (a flush worker hashes each chunk of a memtable while the next arrives)."""
        self.path = path
        self.file_no = file_no
        self._fs = fs
        self._file = fs.create(path)
        self._block_bytes = block_bytes
        self._bits = bits_per_key
        self._out: list[bytes] = []
        self._out_bytes = 0
        self.offset = 0
        self._keys: list[bytes] = []
        self._recs: list[Rec] = []
        self._est = 0
        self._index_keys: list[bytes] = []
        self._index_offsets: list[int] = []
        self._index_sizes: list[int] = []
        self._hashes: list[int] = []
        self._hash_keys = hash_keys
        self.global_filter: array | None = None  # set by finish(global_words=...)
        self.entries = 0
        self.max_ts = 0
        self.tombstones = 0
        self.expiring = 0
        self.smallest: bytes | None = None

    def add(self, key: bytes, rec: Rec) -> None:
        self._keys.append(key)
        self._recs.append(rec)
        self._est += len(key) + len(rec[1]) + _ENTRY_OVERHEAD
        if self._est >= self._block_bytes or len(self._keys) >= MAX_BLOCK_ENTRIES:
            self._finish_block()

    def add_all(self, keys: list[bytes], data: dict[bytes, Rec]) -> None:
        """Add many sorted keys whose records live in `data` (flush and compaction).

        Block boundaries come from a running total of entry sizes and a bisect per block, so
        the per-entry work is a few C-level passes (map, zip, accumulate) rather than a loop.
        """
        self._finish_block()
        if not keys:
            return
        recs = list(map(data.__getitem__, keys))
        sizes = map(add, map(len, keys), map(len, map(itemgetter(1), recs)))
        cum = list(accumulate(map(add, sizes, repeat(_ENTRY_OVERHEAD))))
        n = len(keys)
        i = 0
        base = 0
        limit = self._block_bytes
        while i < n:
            j = bisect_left(cum, base + limit, i) + 1
            if j > n:
                j = n
            elif j - i > MAX_BLOCK_ENTRIES:
                j = i + MAX_BLOCK_ENTRIES
            self._keys = keys[i:j]
            self._recs = recs[i:j]
            self._finish_block()
            base = cum[j - 1]
            i = j

    @property
    def hashes(self) -> list[int]:
        """XXH3 hashes of every key added so far (complete after `finish`)."""
        return self._hashes

    @property
    def estimated_size(self) -> int:
        return self.offset + self._est

    def _finish_block(self) -> None:
        keys = self._keys
        if not keys:
            return
        block, max_ts, tombstones, expiring = encode_block(keys, self._recs)
        if self.smallest is None:
            self.smallest = keys[0]
        self._index_keys.append(keys[-1])
        self._index_offsets.append(self.offset)
        self._index_sizes.append(len(block))
        if self._hash_keys:
            self._hashes.extend(map(bloom.key_hash, keys))
        self.entries += len(keys)
        if max_ts > self.max_ts:
            self.max_ts = max_ts
        self.tombstones += tombstones
        self.expiring += expiring
        self._emit(block)
        self._keys = []
        self._recs = []
        self._est = 0

    def _emit(self, block: bytes) -> None:
        self._out.append(block)
        self._out.append(CRC.pack(crc32c(block)))
        self.offset += len(block) + CRC.size
        self._out_bytes += len(block) + CRC.size
        if self._out_bytes >= 1 << 20:
            self._file.write(b"".join(self._out))
            self._out = []
            self._out_bytes = 0

    def finish(self, global_words: int = 0, filter_words: array | None = None) -> TableMeta:
        """Write filter, index, meta and footer, fsync, close. The caller fsyncs the directory.

        `filter_words`: every key's hash already in one filter of `bloom.pair_words` words
        (with `hash_keys=False`), folded here into this table's filter and the global one."""
        self._finish_block()
        if not self.entries:
            raise ValueError("an SSTable needs at least one entry")
        if filter_words is not None:
            own, pair = bloom.split_pair(
                filter_words, self.entries, self._bits, global_words or len(filter_words)
            )
            if global_words:
                self.global_filter = pair
        elif global_words:
            # One pass over the hashes gives both this table's filter and its keys as a filter
            # for the engine-wide one (either is the other folded).
            own, self.global_filter = bloom.build_pair(self._hashes, self._bits, global_words)
        else:
            own = bloom.build(self._hashes, self._bits)
        filter_words = own.tobytes()
        filter_off = self.offset
        self._emit(filter_words)
        n = len(self._index_keys)
        index = b"".join(
            [
                INDEX_HEADER.pack(n),
                struct.pack(f"<{n}H", *map(len, self._index_keys)),
                struct.pack(f"<{n}Q", *self._index_offsets),
                struct.pack(f"<{n}I", *self._index_sizes),
                b"".join(self._index_keys),
            ]
        )
        index_off = self.offset
        self._emit(index)
        largest = self._index_keys[-1]
        smallest = self.smallest or b""
        meta = (
            META.pack(
                self.entries,
                self.max_ts,
                self.tombstones,
                self.expiring,
                len(smallest),
                len(largest),
            )
            + smallest
            + largest
        )
        meta_off = self.offset
        self._emit(meta)
        head = FOOTER.pack(
            meta_off,
            len(meta),
            index_off,
            len(index),
            filter_off,
            len(filter_words),
            FORMAT_VERSION,
            0,
            MAGIC,
        )
        footer_crc = crc32c(head[:40])
        footer = FOOTER.pack(
            meta_off,
            len(meta),
            index_off,
            len(index),
            filter_off,
            len(filter_words),
            FORMAT_VERSION,
            footer_crc,
            MAGIC,
        )
        self._out.append(footer)
        self.offset += len(footer)
        self._file.write(b"".join(self._out))
        self._out = []
        self._file.sync()
        self._file.close()
        return TableMeta(self.file_no, self.offset, self.entries, smallest, largest)

    def abandon(self) -> None:
        """Close and delete the unfinished table (on a full disk its bytes are the room
        that the retry needs)."""
        self._file.close()
        try:
            self._fs.remove(self.path)
        except OSError:
            pass


class TableReader:
    """Random and sequential access to one SSTable; only footer, index and filter are loaded."""

    __slots__ = (
        "file_no",
        "path",
        "size",
        "data",
        "smallest",
        "largest",
        "entries",
        "max_ts",
        "tombstones",
        "expiring",
        "index_keys",
        "offsets",
        "sizes",
        "nblocks",
        "fwords",
        "fmask",
        "cache",
        "blocks",
        "refs",
    )

    def __init__(self, fs: FileSystem, path: str, file_no: int, cache: BlockCache) -> None:
        self.file_no = file_no
        self.path = path
        self.cache = cache
        f = fs.open_read(path)
        self.data = f.data
        self.size = f.size
        self._load_footer()

    def _corrupt(self, offset: int | None, reason: str) -> CorruptionError:
        return CorruptionError(self.path, offset, reason)

    def _block_at(self, off: int, length: int, what: str) -> bytes:
        if off < 0 or length < 0 or off + length + CRC.size > self.size:
            raise self._corrupt(off, f"{what} extends past the end of the file")
        raw = self.data[off : off + length]
        (want,) = CRC.unpack_from(self.data, off + length)
        if crc32c(raw) != want:
            raise self._corrupt(off, f"{what} checksum mismatch")
        return raw

    def _load_footer(self) -> None:
        if self.size < FOOTER_BYTES:
            raise self._corrupt(
                None, f"file too short ({self.size} bytes) to hold a footer: truncated?"
            )
        fo = self.size - FOOTER_BYTES
        foot = self.data[fo : self.size]
        (meta_off, meta_len, index_off, index_len, filter_off, filter_len, version, fcrc, magic) = (
            FOOTER.unpack(foot)
        )
        if magic != MAGIC:
            raise self._corrupt(fo, "bad footer magic: truncated or not an SSTable")
        if crc32c(foot[:40]) != fcrc:
            raise self._corrupt(fo, "footer checksum mismatch")
        if version != FORMAT_VERSION:
            raise self._corrupt(fo, f"unsupported SSTable format version {version}")
        meta = self._block_at(meta_off, meta_len, "meta block")
        entries, max_ts, tombstones, expiring, slen, llen = META.unpack_from(meta, 0)
        p = META.size
        self.entries = entries
        self.max_ts = max_ts
        self.tombstones = tombstones
        self.expiring = expiring
        self.smallest = meta[p : p + slen]
        self.largest = meta[p + slen : p + slen + llen]
        index = self._block_at(index_off, index_len, "index block")
        (n,) = INDEX_HEADER.unpack_from(index, 0)
        off = INDEX_HEADER.size
        try:
            klens = struct.unpack_from(f"<{n}H", index, off)
            off += 2 * n
            self.offsets = struct.unpack_from(f"<{n}Q", index, off)
            off += 8 * n
            self.sizes = struct.unpack_from(f"<{n}I", index, off)
            off += 4 * n
            self.index_keys = list(struct.unpack_from(_fmt(klens), index, off))
        except struct.error:
            raise self._corrupt(index_off, "index block does not decode") from None
        self.nblocks = n
        # This table's slots in the block cache (block_cache.py): decoded block or None, and
        # a reference byte per block that a hit sets; one more of each for the whole table
        # (block_cache.Whole: two dicts of every entry, once every block is cached).
        self.blocks: list = [None] * (n + 1)
        self.refs = bytearray(n + 1)
        words = array("Q")
        words.frombytes(self._block_at(filter_off, filter_len, "filter block"))
        self.fwords = words
        self.fmask = len(words) - 1

    def block(self, i: int) -> dict[bytes, Rec]:
        """Data block `i`, through the block cache."""
        self.cache.lookups += 1
        blk = self.blocks[i]
        if blk is None:
            return self.load_cached(i)
        refs = self.refs
        refs[i] = 1
        refs[-1] = 1  # the whole table's byte, when it is one ring entry
        return blk

    def block_get(self, key: bytes) -> Rec | None:
        """The record of `key` (smallest <= key <= largest) in the block that would hold it,
        through the block cache with the hit's bookkeeping inlined (the engine's point reads
        of a table not cached whole; they count their lookups themselves)."""
        i = bisect_left(self.index_keys, key)
        blk = self.blocks[i]
        if blk is None:
            blk = self.load_cached(i)
        else:
            self.refs[i] = 1
        return blk.get(key)

    def load_cached(self, i: int) -> dict[bytes, Rec]:
        """Load data block `i` and cache it: a block cache miss (`Engine.get` inlines the hit)."""
        self.cache.misses += 1
        blk = self.load_block(i)
        blocks = self.blocks
        self.cache.put(blocks, self.refs, i, blk, self.sizes[i])
        if blocks[-1] is None and 0 < blocks.count(None) - 1 <= self.nblocks >> 4:
            self._cache_whole()
        return blk

    def _cache_whole(self) -> None:
        """Load the few blocks (at most 1/16) not cached yet, so that the table gets cached
        whole (block_cache.py), if the cache has room for them and the whole-table dict.
        Random reads leave some blocks unread for long: a block of one or two entries (at the
        end of a compaction chunk) is rarely the one a read needs."""
        blocks, sizes = self.blocks, self.sizes
        todo = [j for j in range(self.nblocks) if blocks[j] is None]
        need = sum(sizes[j] for j in todo) + WHOLE_ENTRY_BYTES * self.entries
        if not self.cache.has_room(need):
            return
        for j in todo:
            self.cache.put(blocks, self.refs, j, self.load_block(j), sizes[j])

    def load_block(self, i: int) -> dict[bytes, Rec]:
        return self._decoded(i, decode_block)

    def block_keys(self, i: int) -> tuple[bytes, ...]:
        """The keys of data block `i` (checksum verified), not through the cache."""
        return self._decoded(i, decode_block_keys)

    def _decoded(self, i: int, decode: Callable[[bytes], _T]) -> _T:
        """Data block `i` read, its checksum verified, and decoded by `decode`."""
        off = self.offsets[i]
        raw = self._block_at(off, self.sizes[i], "data block")
        try:
            return decode(raw)
        except (struct.error, ValueError):
            raise self._corrupt(off, "data block does not decode") from None

    def may_contain(self, h: int, mask: int) -> bool:
        return self.fwords[h & self.fmask] & mask == mask

    def get(self, key: bytes) -> Rec | None:
        """The record for `key` in this table, without consulting the filter."""
        whole = self.blocks[-1]
        if whole is not None:
            self.refs[-1] = 1
            return whole[0].get(key)
        i = bisect_left(self.index_keys, key)
        if i == self.nblocks:
            return None
        return self.block(i).get(key)

    def items(
        self, start: bytes | None = None, end: bytes | None = None, *, cache: bool = True
    ) -> Iterator[tuple[bytes, Rec]]:
        """Records with start <= key < end, in order."""
        i = 0 if start is None else bisect_left(self.index_keys, start)
        load = self.block if cache else self.load_block
        first = True
        while i < self.nblocks:
            blk = load(i)
            it = iter(blk.items())
            if first and start is not None:
                for k, rec in it:
                    if k >= start:
                        if end is not None and k >= end:
                            return
                        yield k, rec
                        break
            first = False
            if end is None:
                yield from it
            else:
                for k, rec in it:
                    if k >= end:
                        return
                    yield k, rec
            i += 1


def iter_table_entries(path: str, fs: FileSystem | None = None) -> Iterator[tuple[bytes, Version]]:
    """Every entry of the table file at `path`, in key order, as (key, Version): value,
    timestamp, tombstone flag and expiry time (None: no TTL). Each block's checksum is verified
    (CorruptionError names the file and offset). For tools that read tables outside an engine,
    e.g. a restore reading a checkpoint's tables."""
    reader = TableReader(fs or RealFS(), path, 0, BlockCache(0))
    for key, rec in reader.items(cache=False):
        yield key, to_version(rec)
