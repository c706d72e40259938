"""SSTables (storage/sstable.py): what a builder writes a reader gives back, the bytes are the
ones docs/formats.md describes (blocks, bloom filter, index, footer), and damage anywhere in a
table is reported naming the table instead of returning wrong data."""

from __future__ import annotations

import struct

import pytest
import xxhash
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limedb.storage.block_cache import BlockCache
from limedb.storage.errors import CorruptionError
from limedb.storage.fs import CrashableMemFS, RealFS
from limedb.storage.record import EXPIRES, TOMBSTONE
from limedb.storage.sstable import MAGIC, TableBuilder, TableMeta, TableReader

from .strategies import records

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATH = "/db/000009.sst"
FOOTER = struct.Struct("<QIQIQIIIQ")

recs = records(max_value=200)
tables = st.dictionaries(st.binary(min_size=0, max_size=30), recs, min_size=1, max_size=120)


def memfs() -> CrashableMemFS:
    fs = CrashableMemFS(0)
    fs.makedirs("/db")
    return fs


def build(fs, path: str, data: dict, *, block_bytes: int = 256, one_by_one: bool = True):
    builder = TableBuilder(fs, path, 9, block_bytes=block_bytes)
    keys = sorted(data)
    if one_by_one:
        for key in keys:
            builder.add(key, data[key])
    else:
        builder.add_all(keys, data)
    return builder.finish()


def reader(fs, path: str = PATH) -> TableReader:
    return TableReader(fs, path, 9, BlockCache(1 << 20))


def sample(n: int = 60) -> dict:
    out = {}
    for i in range(n):
        key = b"key%04d" % i
        if i % 7 == 3:
            out[key] = (1000 + i, b"", TOMBSTONE, 0)
        elif i % 5 == 1:
            out[key] = (1000 + i, b"v%d" % i, EXPIRES, 5_000 + i)
        else:
            out[key] = (1000 + i, b"value-%d" % i * 3, 0, 0)
    return out


# ---------------------------------------------------------------------------- round trip


@PROPERTY
@given(tables, st.sampled_from([64, 256, 4096]))
def test_a_table_gives_back_every_record_in_key_order_and_nothing_else(data, block_bytes):
    fs = memfs()
    meta = build(fs, PATH, data, block_bytes=block_bytes)
    table = reader(fs)
    keys = sorted(data)
    assert list(table.items()) == [(k, data[k]) for k in keys]
    for key in keys:
        assert table.get(key) == data[key]
        h = xxhash.xxh3_64_intdigest(key)
        assert table.may_contain(h, _mask(h)), "the bloom filter must never hide a key"
    assert table.get(keys[-1] + b"\x00") is None
    assert meta == TableMeta(9, len(fs.read_file(PATH)), len(keys), keys[0], keys[-1])
    assert (table.entries, table.smallest, table.largest) == (len(keys), keys[0], keys[-1])
    assert table.max_ts == max(r[0] for r in data.values())
    assert table.tombstones == sum(1 for r in data.values() if r[2] & TOMBSTONE)
    assert table.expiring == sum(1 for r in data.values() if r[2] & EXPIRES)


@PROPERTY
@given(tables, st.binary(max_size=30), st.binary(max_size=30))
def test_a_range_read_returns_exactly_the_keys_from_start_up_to_end(data, start, end):
    fs = memfs()
    build(fs, PATH, data)
    table = reader(fs)
    want = [(k, data[k]) for k in sorted(data) if start <= k < end]
    assert list(table.items(start, end)) == want
    assert list(table.items(start, None)) == [(k, data[k]) for k in sorted(data) if k >= start]


@PROPERTY
@given(tables, st.sampled_from([64, 256, 4096]))
def test_flush_and_compaction_write_the_same_bytes_as_adding_one_key_at_a_time(data, block_bytes):
    """add_all (flush, compaction) finds block boundaries by bisecting running sizes; it must
    close blocks exactly where add() does, or the two paths would write different tables."""
    fs = memfs()
    build(fs, "/db/a.sst", data, block_bytes=block_bytes, one_by_one=True)
    build(fs, "/db/b.sst", data, block_bytes=block_bytes, one_by_one=False)
    assert fs.read_file("/db/a.sst") == fs.read_file("/db/b.sst")


def test_a_table_on_real_files_reads_back_through_mmap(tmp_path):
    fs = RealFS()
    path = str(tmp_path / "000009.sst")
    data = sample(400)
    meta = build(fs, path, data)
    assert meta.size == (tmp_path / "000009.sst").stat().st_size
    table = reader(fs, path)
    assert table.nblocks > 1
    assert dict(table.items()) == data
    assert table.get(b"key0123") == data[b"key0123"]


def test_an_empty_table_is_refused():
    fs = memfs()
    builder = TableBuilder(fs, PATH, 9)
    with pytest.raises(ValueError, match="at least one entry"):
        builder.finish()


def test_an_uncached_scan_leaves_the_block_cache_to_the_reads():
    """Compaction reads every block once; it must not evict what foreground reads use."""
    fs = memfs()
    build(fs, PATH, sample(200))
    table = reader(fs)
    assert len(list(table.items(cache=False))) == 200
    assert len(table.cache) == 0
    table.get(b"key0100")
    assert len(table.cache) == 1


# ---------------------------------------------------------------------------- the bytes


def _mask(h: int) -> int:
    """The probe mask exactly as docs/formats.md words it (an independent reading)."""

    def t(i: int) -> int:
        return (1 << (i & 63)) | (1 << (i >> 6))

    return t((h >> 28) & 4095) | t((h >> 40) & 4095) | t((h >> 52) & 4095)


def _block(raw: bytes, off: int, length: int) -> bytes:
    body = raw[off : off + length]
    assert struct.unpack_from("<I", raw, off + length)[0] == crc32c(body), "block CRC follows it"
    return body


def test_the_file_is_laid_out_as_the_format_document_says():
    fs = memfs()
    data = sample(60)
    build(fs, PATH, data, block_bytes=256)
    raw = fs.read_file(PATH)

    footer = raw[-52:]
    meta_off, meta_len, index_off, index_len, filter_off, filter_len, version, fcrc, magic = (
        FOOTER.unpack(footer)
    )
    assert (magic, version, MAGIC) == (0x4C494D4553535401, 1, 0x4C494D4553535401)
    assert fcrc == crc32c(footer[:40])
    assert filter_off < index_off < meta_off < len(raw) - 52

    meta = _block(raw, meta_off, meta_len)
    entries, max_ts, tombstones, expiring, slen, llen = struct.unpack_from("<QQQQHH", meta)
    assert (entries, max_ts) == (60, 1059)
    assert tombstones == sum(1 for r in data.values() if r[2] == TOMBSTONE)
    assert expiring == sum(1 for r in data.values() if r[2] == EXPIRES)
    assert meta[36 : 36 + slen] == b"key0000" and meta[36 + slen :] == b"key0059"

    index = _block(raw, index_off, index_len)
    (b,) = struct.unpack_from("<I", index)
    assert b > 1
    klens = struct.unpack_from(f"<{b}H", index, 4)
    offsets = struct.unpack_from(f"<{b}Q", index, 4 + 2 * b)
    sizes = struct.unpack_from(f"<{b}I", index, 4 + 10 * b)
    last_keys, pos = [], 4 + 14 * b
    for n in klens:
        last_keys.append(index[pos : pos + n])
        pos += n
    assert offsets[0] == 0
    assert offsets[-1] + sizes[-1] + 4 == filter_off, "data blocks, then the filter block"

    decoded = {}
    for off, size, last in zip(offsets, sizes, last_keys, strict=True):
        block = _block(raw, off, size)
        n, bflags = struct.unpack_from("<HB", block)
        p = 3
        kl = struct.unpack_from(f"<{n}H", block, p)
        p += 2 * n
        vl = struct.unpack_from(f"<{n}I", block, p)
        p += 4 * n
        ts = struct.unpack_from(f"<{n}Q", block, p)
        p += 8 * n
        flags = block[p : p + n]
        p += n
        exp = struct.unpack_from(f"<{n}Q", block, p) if bflags & 1 else (0,) * n
        p += 8 * n if bflags & 1 else 0
        assert bool(bflags & 1) == any(f & EXPIRES for f in flags)
        block_keys = []
        for k in kl:
            block_keys.append(block[p : p + k])
            p += k
        for i, key in enumerate(block_keys):
            decoded[key] = (ts[i], block[p : p + vl[i]], flags[i], exp[i])
            p += vl[i]
        assert p == size and block_keys[-1] == last
    assert decoded == data

    words = struct.unpack(f"<{filter_len // 8}Q", _block(raw, filter_off, filter_len))
    m = len(words)
    assert m & (m - 1) == 0 and m * 64 >= 60 * 10, "a power of two, ~10 bits per key"
    for key in data:
        h = xxhash.xxh3_64_intdigest(key, seed=0)
        assert words[h & (m - 1)] & _mask(h) == _mask(h)


def test_a_data_block_closes_once_its_entries_reach_the_block_size():
    fs = memfs()
    # 10-byte key + 67-byte value + 23 bytes of columns = 100 bytes per entry.
    data = {b"k%09d" % i: (i, b"x" * 67, 0, 0) for i in range(10)}
    build(fs, PATH, data, block_bytes=300)
    assert reader(fs).nblocks == 4  # 3 + 3 + 3 + 1 entries


# ---------------------------------------------------------------------------- damage


def test_a_file_too_short_for_a_footer_is_refused_as_truncated():
    fs = memfs()
    build(fs, PATH, sample(10))
    fs.truncate(PATH, 40)
    with pytest.raises(CorruptionError, match="truncated") as err:
        reader(fs)
    assert err.value.path == PATH and err.value.offset is None


def test_a_table_cut_short_is_refused_naming_it():
    fs = memfs()
    build(fs, PATH, sample(10))
    fs.truncate(PATH, len(fs.read_file(PATH)) - 1)
    with pytest.raises(CorruptionError) as err:
        reader(fs)
    assert err.value.path == PATH


def _rewrite_footer(fs: CrashableMemFS, **fields) -> None:
    """Replace footer fields and re-seal its CRC, so only the named field is wrong."""
    raw = bytearray(fs.read_file(PATH))
    names = ["meta_off", "meta_len", "index_off", "index_len", "filter_off", "filter_len"]
    values = dict(zip(names + ["version", "crc", "magic"], FOOTER.unpack(raw[-52:]), strict=True))
    values.update(fields)
    head = FOOTER.pack(*[values[n] for n in names], values["version"], 0, values["magic"])
    values["crc"] = crc32c(head[:40])
    raw[-52:] = FOOTER.pack(*[values[n] for n in names + ["version", "crc", "magic"]])
    fs.create(PATH).write(bytes(raw))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"version": 2}, "unsupported SSTable format version 2"),
        ({"index_off": 1 << 40}, "index block extends past the end"),
        ({"meta_len": 1 << 30}, "meta block extends past the end"),
        ({"magic": 0x1234}, "bad footer magic"),
    ],
)
def test_a_footer_that_does_not_describe_a_readable_table_is_refused(fields, reason):
    fs = memfs()
    build(fs, PATH, sample(10))
    _rewrite_footer(fs, **fields)
    with pytest.raises(CorruptionError, match=reason) as err:
        reader(fs)
    assert err.value.path == PATH


def test_a_flipped_byte_in_a_data_block_fails_the_read_naming_table_and_block():
    fs = memfs()
    build(fs, PATH, sample(60), block_bytes=256)
    table = reader(fs)
    second = table.offsets[1]
    fs.corrupt(PATH, second + 5)
    damaged = reader(fs)  # data blocks are read on demand: opening still works
    assert damaged.get(b"key0000") is not None
    with pytest.raises(CorruptionError, match="data block checksum") as err:
        damaged.get(table.index_keys[1])
    assert err.value.path == PATH and err.value.offset == second


def test_no_single_flipped_byte_anywhere_in_a_table_goes_unnoticed():
    """Every byte is under a CRC (blocks, footer) or checked (magic): flipping any one is
    reported when the table is opened or its blocks are read, never returned as data."""
    fs = memfs()
    data = sample(30)
    build(fs, PATH, data, block_bytes=256)
    size = len(fs.read_file(PATH))
    for offset in range(size):
        fs.corrupt(PATH, offset, 0x10)
        with pytest.raises(CorruptionError) as err:
            list(reader(fs).items(cache=False))
        assert err.value.path == PATH
        fs.corrupt(PATH, offset, 0x10)  # flip it back
    assert dict(reader(fs).items()) == data


def test_a_blocks_keys_read_alone_are_the_keys_its_records_decode_to(tmp_path):
    """The engine-wide filter is rebuilt from `block_keys`, which skips the records: with and
    without the expiry column, the same keys in the same order."""
    fs = RealFS()
    builder = TableBuilder(fs, str(tmp_path / "t.sst"), 1, 512)
    data = {b"k%05d" % i: (i, b"v" * (i % 40), 0, 0) for i in range(0, 3000, 3)}
    data.update({b"k%05d" % i: (i, b"", TOMBSTONE | EXPIRES, 7) for i in range(1, 3000, 9)})
    builder.add_all(sorted(data), data)
    builder.finish()
    reader = TableReader(fs, str(tmp_path / "t.sst"), 1, BlockCache(0))
    assert reader.nblocks > 10
    for i in range(reader.nblocks):
        assert list(reader.block_keys(i)) == list(reader.load_block(i))
