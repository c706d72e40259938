"""Bloom filters never miss a stored key, and folding one equals building it smaller."""

from __future__ import annotations

import random

from limedb.storage import bloom


def _hashes(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [bloom.key_hash(rng.randbytes(16)) for _ in range(n)]


def test_a_filter_contains_every_key_it_was_built_from_and_few_others():
    present = _hashes(20_000, 1)
    words = bloom.build(present, 10)
    assert all(bloom.may_contain(words, h) for h in present)
    absent = _hashes(20_000, 2)
    assert sum(bloom.may_contain(words, h) for h in absent) < 0.03 * len(absent)


def test_folding_a_filter_equals_building_it_at_the_smaller_size():
    hashes = _hashes(5_000, 3)
    for small, big in ((256, 4096), (1024, 1024), (64, 65536)):
        assert bloom.fold(bloom.build_words(hashes, big), small) == bloom.build_words(hashes, small)
    own, other = bloom.build_pair(hashes, 10, 1 << 16)
    assert own == bloom.build(hashes, 10)
    assert other == bloom.build_words(hashes, 1 << 16)


def test_global_filter_keeps_every_added_table_and_a_passthrough_lets_all_through():
    g = bloom.GlobalFilter.from_hashes([], 0, bloom.GlobalFilter.size_for(30_000))
    tables = [_hashes(10_000, seed) for seed in (4, 5, 6)]
    for hashes in tables:
        g = g.with_words(bloom.build(hashes, 10), len(hashes))  # any size: tiled or folded
    for hashes in tables:
        assert all(g.words[h & g.mask] & bloom.probe_mask(h) == bloom.probe_mask(h) for h in hashes)
    p = bloom.GlobalFilter.passthrough()
    h = _hashes(1, 7)[0]
    assert p.words[h & p.mask] & bloom.probe_mask(h) == bloom.probe_mask(h)
