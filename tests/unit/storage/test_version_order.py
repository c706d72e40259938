"""Versions of one key have one winner whatever the order they arrive in, even on equal
timestamps (two coordinators can stamp the same HLC value): replicas never disagree forever."""

from __future__ import annotations

import itertools
import time

from hypothesis import given
from hypothesis import strategies as st
from limedb.cluster.replica import Stored
from limedb.hlc import pack
from limedb.storage import WriteBatch
from limedb.storage.record import make_rec, newer

recs = st.builds(
    make_rec,
    st.integers(0, 3),
    st.binary(max_size=3),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 3)),
)


@given(recs, recs)
def test_of_two_distinct_versions_exactly_one_wins(a, b):
    if a == b:
        assert not newer(a, b)
    else:
        assert newer(a, b) != newer(b, a)


@given(recs, recs, recs)
def test_the_order_is_transitive(a, b, c):
    if newer(a, b) and newer(b, c):
        assert newer(a, c)


def test_equal_timestamps_tombstone_then_larger_value_then_later_expiry_win():
    ts = pack(5_000)
    assert newer(make_rec(ts, b"", True, None), make_rec(ts, b"zzz", False, None))
    assert newer(make_rec(ts, b"b", False, None), make_rec(ts, b"a", False, None))
    assert newer(make_rec(ts, b"a", False, 20), make_rec(ts, b"a", False, 10))
    assert newer(make_rec(ts + 1, b"a", False, None), make_rec(ts, b"", True, None))


@given(recs, recs)
def test_cluster_read_resolution_agrees_with_storage(a, b):
    def stored(rec):
        return Stored(rec[0], rec[1], bool(rec[2] & 1), rec[3] if rec[2] & 2 else None)

    assert stored(a).newer_than(stored(b)) == newer(a, b)


def _write(engine, key: bytes, value: bytes | None, ts: int) -> None:
    batch = WriteBatch()
    batch.delete(key, ts) if value is None else batch.put(key, value, ts, None)
    engine.write(batch)


def test_replicas_receiving_equal_timestamp_writes_in_any_order_keep_the_same_one(
    open_engine, tmp_path
):
    ts = pack(time.time_ns() // 1_000_000)  # recent: compaction keeps the tombstone
    writes = [b"apple", b"pear", None, b"zebra"]
    outcomes = set()
    for n, order in enumerate(itertools.permutations(writes)):
        engine = open_engine(tmp_path / f"replica-{n}")
        for i, value in enumerate(order):
            _write(engine, b"k", value, ts)
            if i == 1:
                engine.flush()  # the versions meet again in the memtable/table merge
        outcomes.add(engine.get_version(b"k"))
        engine.compact()
        outcomes.add(engine.get_version(b"k"))
    assert len(outcomes) == 1
    (winner,) = outcomes
    assert winner.tombstone and winner.ts == ts


def test_values_at_equal_timestamp_converge_to_the_larger_one_through_compaction(
    open_engine, tmp_path
):
    ts = pack(time.time_ns() // 1_000_000)  # recent: compaction keeps the tombstone
    kept = []
    for n, order in enumerate(([b"a", b"b"], [b"b", b"a"])):
        engine = open_engine(tmp_path / f"replica-{n}")
        _write(engine, b"k", order[0], ts)
        engine.flush()
        _write(engine, b"k", order[1], ts)
        engine.flush()
        engine.compact()
        kept.append(engine.get(b"k"))
    assert kept == [b"b", b"b"]
