"""Engine.export_ranges cuts key ranges out of a consistent view into one table that
Engine.ingest takes on another engine: the same newest versions, tombstones and TTLs included."""

from __future__ import annotations

import os
import random
import time

from limedb.storage import Engine
from limedb.storage.offload import BACKGROUND_NICE

from .conftest import SMALL

NO_THREADS = dict(SMALL, background_threads=False)


def _key(i: int) -> bytes:
    return b"k%05d" % i


def _stored(e: Engine, start=None, end=None) -> dict:
    return {
        k: (v.ts, v.value, v.tombstone, v.expires_at_ms)
        for k, v in e.iter_range(start, end, include_tombstones=True)
    }


def _layered(e: Engine, n: int) -> None:
    """Versions of the same keys in the deepest level, L0 and the memtable."""
    for i in range(n):
        e.put(_key(i), b"deep%d" % i + b"." * 60)
    e.compact()
    for i in range(0, n, 3):
        e.put(_key(i), b"l0-%d" % i)
    e.flush()
    for i in range(0, n, 5):
        e.delete(_key(i))
    for i in range(1, n, 7):
        e.put(_key(i), b"ttl", expires_at_ms=time.time_ns() // 1_000_000 + 3_600_000)


def test_exported_ranges_ingest_as_the_same_versions(open_engine, tmp_path):
    src = open_engine(tmp_path / "src", options=NO_THREADS)
    _layered(src, 600)
    ranges = [(_key(100), _key(200)), (_key(450), None)]
    out = src.export_ranges(ranges, tmp_path / "cut.sst")
    want = {**_stored(src, _key(100), _key(200)), **_stored(src, _key(450), None)}
    assert out.entries == len(want) == 250 and out.size == os.path.getsize(tmp_path / "cut.sst")
    dst = open_engine(tmp_path / "dst", options=NO_THREADS)
    dst.ingest([out.path])
    assert _stored(dst) == want


def test_a_cut_in_chunks_of_blocks_holds_exactly_the_newest_versions_of_its_ranges(
    open_engine, tmp_path, monkeypatch
):
    # Chunks of 2 blocks: chunk edges, range edges and block edges fall everywhere.
    monkeypatch.setattr("limedb.storage.export.CHUNK_BLOCKS", 2)
    src = open_engine(tmp_path / "src", options=NO_THREADS)
    _layered(src, 900)
    rng = random.Random(7)
    for n in range(20):
        edges = sorted(rng.sample(range(-5, 910), 6))
        ranges = [
            (_key(max(a, 0)), _key(b) if b < 900 else None)
            for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
        out = src.export_ranges(ranges, tmp_path / f"cut{n}.sst")
        want = {k: v for s, e in ranges for k, v in _stored(src, s, e).items()}
        assert out.entries == len(want)
        dst = open_engine(tmp_path / f"dst{n}", options=NO_THREADS)
        if want:
            dst.ingest([out.path])
        assert _stored(dst) == want


def test_ranges_holding_nothing_write_no_table(open_engine, tmp_path):
    src = open_engine(tmp_path / "src", options=NO_THREADS)
    _layered(src, 50)
    out = src.export_ranges([(b"x", b"y")], tmp_path / "cut.sst")
    assert out.entries == 0 and not os.path.exists(tmp_path / "cut.sst")


def test_a_big_cut_runs_in_a_low_priority_worker_process(open_engine, tmp_path):
    src = open_engine(
        tmp_path / "src", options=dict(SMALL, memtable_bytes=1 << 20, durability="none")
    )
    for i in range(30_000):
        src.put(_key(i), b"v" * 80)
    src.compact()
    src.put(_key(5), b"newest")
    out = src.export_ranges([(_key(0), _key(20_000))], tmp_path / "cut.sst")
    pool = src._workers.background
    assert pool is not None and pool.pids()  # the cut ran in a worker, at a lower priority
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pool.pids()[0]) == min(19, own + BACKGROUND_NICE)
    assert out.entries == 20_000
    dst = open_engine(tmp_path / "dst", options=NO_THREADS)
    dst.ingest([out.path])
    assert dst.get(_key(5)) == b"newest" and dst.get(_key(19_999)) == b"v" * 80
    assert dst.get(_key(20_000)) is None
