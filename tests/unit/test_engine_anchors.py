"""The engine benchmark's anchors run with LimeDB's budgets, not their libraries' defaults.

Read back from what RocksDB itself recorded (its OPTIONS file) and from a round trip through
each store, so a change to benchmarks/engine_anchors.py or to EngineOptions that lets the
anchors drift apart from the engine fails here rather than skewing a published ratio.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from limedb.storage import EngineOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from engine_anchors import open_plyvel, open_rocksdict  # noqa: E402


def rocksdb_options(path: Path) -> dict[str, str]:
    """Every `name=value` line of the newest OPTIONS file RocksDB wrote in `path`."""
    newest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    out = {}
    for line in newest.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep:
            out[name] = value
    return out


@pytest.mark.parametrize("opts", [EngineOptions(durability="none"), EngineOptions(
    durability="none", memtable_bytes=4 << 20, block_cache_bytes=64 << 20, block_bytes=8192,
    target_file_bytes=2 << 20, level_base_bytes=16 << 20, l0_compaction_trigger=6,
)])  # fmt: skip
def test_rocksdict_anchor_takes_the_engine_budgets(tmp_path: Path, opts: EngineOptions) -> None:
    store = open_rocksdict(str(tmp_path / "r"), opts)
    try:
        store.put(b"\x00raw key", b"\xffraw value")
        assert store.get(b"\x00raw key") == b"\xffraw value"  # raw bytes, not pickled
        assert store.get(b"missing") is None
        store.drain()
    finally:
        store.close()
    o = rocksdb_options(tmp_path / "r")
    assert o["write_buffer_size"] == str(opts.memtable_bytes)
    assert o["compression"] == "kNoCompression"
    assert o["filter_policy"] == "bloomfilter"
    assert o["block_size"] == str(opts.block_bytes)
    assert o["target_file_size_base"] == str(opts.target_file_bytes)
    assert o["max_bytes_for_level_base"] == str(opts.level_base_bytes)
    assert o["level0_file_num_compaction_trigger"] == str(opts.l0_compaction_trigger)
    assert o["num_levels"] == str(opts.max_levels)
    # The block cache's size is in RocksDB's own log of the options it opened with.
    log = (tmp_path / "r" / "LOG").read_text()
    assert f"capacity : {opts.block_cache_bytes}\n" in log


def test_plyvel_anchor_opens_with_the_engine_budgets_and_round_trips(tmp_path: Path) -> None:
    # LevelDB records none of its options; that it opens with them and stores raw bytes is
    # what can be checked from outside.
    opts = dataclasses.replace(EngineOptions(durability="none"), bloom_bits_per_key=12)
    store = open_plyvel(str(tmp_path / "p"), opts)
    try:
        store.put(b"\x00k", b"\xffv")
        assert store.get(b"\x00k") == b"\xffv"
        assert store.get(b"missing") is None
    finally:
        store.close()
