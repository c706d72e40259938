"""Merkle trees built from real storage engines find exactly the token ranges where two
replicas differ, and streaming those ranges makes the replicas identical."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limedb.cluster.keys import MAX_TOKEN, storage_key, token_of
from limedb.cluster.merkle import EMPTY, MerkleTree, diff, differing_leaves, storage_bounds
from limedb.hlc import pack
from limedb.storage import Engine, EngineOptions, Version

TS = pack(1_700_000_000_000)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    a = Engine.open(tmp_path / "a", EngineOptions(durability="none"))
    b = Engine.open(tmp_path / "b", EngineOptions(durability="none"))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def fill(engine: Engine, count: int, seed: int = 1) -> list[bytes]:
    """The same `count` keys with the same versions, in an order that depends on `seed`."""
    keys = [f"key-{i}".encode() for i in range(count)]
    order = keys[:]
    random.Random(seed).shuffle(order)
    for key in order:
        engine.put(storage_key(key), b"value of " + key, ts=TS + int(key[4:]))
    return keys


def full_tree(engine: Engine, depth: int = 8) -> MerkleTree:
    return MerkleTree.from_storage(engine, 0, MAX_TOKEN, depth)


def repair(source: Engine, target: Engine, ranges: list[tuple[int, int]]) -> int:
    """Stream every version of `ranges` from source to target (what anti-entropy does)."""
    sent = 0
    for lo, hi in ranges:
        start, end = storage_bounds(lo, hi)
        for skey, version in source.iter_range(start, end, include_tombstones=True):
            if version.tombstone:
                target.delete(skey, ts=version.ts)
            else:
                target.put(skey, version.value, ts=version.ts, expires_at_ms=version.expires_at_ms)
            sent += 1
    return sent


def test_replicas_with_the_same_data_have_equal_roots_whatever_the_write_order(engines):
    a, b = engines
    fill(a, 2000, seed=1)
    fill(b, 2000, seed=2)
    b.flush()  # one replica reads from SSTables, the other from its memtable
    ta, tb = full_tree(a), full_tree(b)
    assert ta.root == tb.root != EMPTY
    assert diff(ta, tb) == []
    assert ta.key_count == 2000


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda e, k: e.put(storage_key(k), b"other", ts=TS + 10**6), id="value"),
        pytest.param(lambda e, k: e.delete(storage_key(k), ts=TS + 10**6), id="tombstone"),
        pytest.param(
            lambda e, k: e.put(storage_key(k), b"value of " + k, ts=TS + 10**6), id="timestamp"
        ),
        pytest.param(
            lambda e, k: e.put(
                storage_key(k), b"value of " + k, ts=TS + 10**6, expires_at_ms=2_000_000_000_000
            ),
            id="expiry",
        ),
        pytest.param(lambda e, k: e.put(storage_key(b"extra"), b"x", ts=TS), id="extra-key"),
    ],
)
def test_any_difference_in_a_version_shows_up_as_the_leaf_holding_it(engines, mutate):
    a, b = engines
    keys = fill(a, 500)
    fill(b, 500)
    victim = keys[123]
    mutate(b, victim)
    changed = b"extra" if b.get_version(storage_key(b"extra")) else victim
    ranges = diff(full_tree(a), full_tree(b))
    assert len(ranges) == 1
    lo, hi = ranges[0]
    assert lo <= token_of(changed) <= hi
    assert hi - lo + 1 == (MAX_TOKEN + 1) >> 8  # one leaf of a depth-8 tree


def test_streaming_the_differing_ranges_makes_the_replicas_identical(engines):
    a, b = engines
    keys = fill(a, 3000)
    fill(b, 3000)
    rng = random.Random(5)
    for key in rng.sample(keys, 40):
        a.put(storage_key(key), b"newer on a", ts=TS + 10**7)
    for key in rng.sample(keys, 10):
        a.delete(storage_key(key), ts=TS + 10**7)
    for i in range(25):
        a.put(storage_key(f"only-on-a-{i}".encode()), b"x", ts=TS)
    ranges = diff(full_tree(a), full_tree(b))
    assert 0 < len(ranges) <= 75
    streamed = repair(a, b, ranges)
    assert streamed < 3000 // 2, "only the differing leaves are streamed, not everything"
    assert full_tree(a).root == full_tree(b).root
    assert list(a.iter_range(include_tombstones=True)) == list(
        b.iter_range(include_tombstones=True)
    )


def test_a_range_tree_sees_only_its_range(engines):
    a, b = engines
    keys = fill(a, 1000)
    fill(b, 1000)
    start, end = 1 << 62, (1 << 63) - 1
    inside = next(k for k in keys if start <= token_of(k) <= end)
    outside = next(k for k in keys if not start <= token_of(k) <= end)
    b.put(storage_key(outside), b"changed", ts=TS + 10**6)
    ta, tb = (MerkleTree.from_storage(e, start, end, depth=6) for e in (a, b))
    assert ta.root == tb.root
    assert ta.key_count == sum(start <= token_of(k) <= end for k in keys)
    b.put(storage_key(inside), b"changed", ts=TS + 10**6)
    [(lo, hi)] = diff(ta, MerkleTree.from_storage(b, start, end, depth=6))
    assert start <= lo <= token_of(inside) <= hi <= end


def test_tombstones_older_than_the_purge_point_are_ignored(engines):
    a, b = engines
    fill(a, 100)
    fill(b, 100)
    a.delete(storage_key(b"gone"), ts=TS)  # b compacted this tombstone away already
    assert diff(full_tree(a), full_tree(b))
    purge = TS + 1
    ta = MerkleTree.from_storage(a, 0, MAX_TOKEN, 8, purged_before_ts=purge)
    tb = MerkleTree.from_storage(b, 0, MAX_TOKEN, 8, purged_before_ts=purge)
    assert diff(ta, tb) == []


def test_empty_replicas_have_a_zero_root_and_differ_from_a_full_one(engines):
    a, b = engines
    assert full_tree(a).root == EMPTY
    fill(b, 10)
    assert len(differing_leaves(full_tree(a), full_tree(b))) == 10


@pytest.mark.parametrize(
    "other",
    [
        Version(TS, b"value", False, 2_000_000_000_000),  # only the expiry differs
        Version(TS, b"", True, None),  # a tombstone at the same timestamp
        Version(TS + 1, b"value", False, None),  # only the timestamp differs
        Version(TS, b"valuE", False, None),  # only the value differs
    ],
)
def test_each_field_of_a_version_counts_in_its_hash(other):
    skey = storage_key(b"k")
    base = MerkleTree.build([(skey, Version(TS, b"value", False, None))], 0, MAX_TOKEN, 4)
    changed = MerkleTree.build([(skey, other)], 0, MAX_TOKEN, 4)
    assert differing_leaves(base, changed) == [base.leaf_of(token_of(b"k"))]


def test_the_tree_survives_the_wire():
    versions = [
        (storage_key(f"k{i}".encode()), Version(TS + i, b"v" * i, i % 7 == 0, None))
        for i in range(300)
    ]
    tree = MerkleTree.build(sorted(versions), 0, MAX_TOKEN, depth=5)
    back = MerkleTree.from_record(tree.to_record())
    assert back.root == tree.root and back.levels == tree.levels and back.counts == tree.counts
    with pytest.raises(ValueError, match="bad Merkle tree record"):
        MerkleTree.from_record({**tree.to_record(), "depth": 6})


def test_trees_of_different_shapes_are_not_compared():
    a = MerkleTree.build([], 0, 1000, depth=4)
    with pytest.raises(ValueError, match="different shapes"):
        diff(a, MerkleTree.build([], 0, 1000, depth=5))
    with pytest.raises(ValueError, match="different shapes"):
        diff(a, MerkleTree.build([], 0, 999, depth=4))


def test_entries_outside_the_range_or_out_of_order_are_refused():
    inside = (storage_key(b"a"), Version(TS, b"x", False, None))
    with pytest.raises(ValueError, match="outside"):
        MerkleTree.build([inside], token_of(b"a") + 1, MAX_TOKEN)
    with pytest.raises(ValueError, match="increasing"):
        MerkleTree.build([inside, inside], 0, MAX_TOKEN)


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, MAX_TOKEN),
    length=st.one_of(st.integers(1, 100), st.integers(1, MAX_TOKEN + 1)),
    depth=st.integers(0, 8),
    data=st.data(),
)
def test_leaves_split_the_range_exactly_and_every_token_lands_in_its_leaf(
    start, length, depth, data
):
    end = min(start + length - 1, MAX_TOKEN)
    tree = MerkleTree.build([], start, end, depth)
    bounds = [tree.leaf_range(i) for i in range(1 << depth)]
    nonempty = [b for b in bounds if b is not None]
    assert nonempty[0][0] == start and nonempty[-1][1] == end
    for (_, hi), (lo, _) in zip(nonempty, nonempty[1:], strict=False):
        assert lo == hi + 1
    token = data.draw(st.integers(start, end))
    leaf = tree.leaf_of(token)
    lo, hi = bounds[leaf]
    assert lo <= token <= hi


@settings(max_examples=100, deadline=None)
@given(
    start=st.integers(0, MAX_TOKEN),
    length=st.integers(1, MAX_TOKEN + 1),
    depth=st.integers(0, 10),
    shared=st.lists(st.integers(0, 2**20), max_size=60, unique=True),
    only_a=st.lists(st.integers(0, 2**20), max_size=5, unique=True),
    changed=st.lists(st.integers(0, 59), max_size=5, unique=True),
)
def test_diff_covers_every_differing_key_and_only_leaves_that_differ(
    start, length, depth, shared, only_a, changed
):
    end = min(start + length - 1, MAX_TOKEN)
    span = end - start + 1

    def skey(i: int) -> bytes:
        # Spread synthetic tokens over the range; the suffix keeps storage keys unique.
        return (start + (i * 0x9E3779B97F4A7C15) % span).to_bytes(8, "big") + b"%d" % i

    a = {skey(i): Version(TS + i, b"v%d" % i, False, None) for i in shared + only_a}
    b = {skey(i): Version(TS + i, b"v%d" % i, False, None) for i in shared}
    for position in changed:
        if position < len(shared):
            key = skey(shared[position])
            b[key] = Version(TS + 10**6, b"changed", False, None)
    tree_a = MerkleTree.build(sorted(a.items()), start, end, depth)
    tree_b = MerkleTree.build(sorted(b.items()), start, end, depth)
    ranges = diff(tree_a, tree_b)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    for key in differing:
        token = int.from_bytes(key[:8], "big")
        assert any(lo <= token <= hi for lo, hi in ranges)
    assert (tree_a.root == tree_b.root) == (not differing)
    for lo, hi in ranges:
        inside = {k for k in a.keys() | b.keys() if lo <= int.from_bytes(k[:8], "big") <= hi}
        assert inside & differing, f"range {lo}..{hi} holds no difference"
