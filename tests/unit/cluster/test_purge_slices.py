"""A node purges handed-off ranges one slice of the token space at a time (so compactions run
between the slices): the slices cover exactly the ranges, in token order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.streaming import (
    PURGE_SLICE_BYTES,
    PURGE_SLICES,
    purge_slice_count,
    purge_slices,
)

WIDTH = (MAX_TOKEN + 1) // 16


def test_a_range_across_slice_boundaries_is_cut_at_them():
    assert purge_slices([(WIDTH - 10, 2 * WIDTH + 5)]) == [
        [(WIDTH - 10, WIDTH - 1)],
        [(WIDTH, 2 * WIDTH - 1)],
        [(2 * WIDTH, 2 * WIDTH + 5)],
    ]
    assert purge_slices([(0, MAX_TOKEN)], slices=4)[-1] == [(3 * (MAX_TOKEN + 1) // 4, MAX_TOKEN)]
    assert purge_slices([]) == []


ranges = st.lists(
    st.tuples(st.integers(0, MAX_TOKEN), st.integers(0, 1 << 62)).map(
        lambda t: (t[0], min(MAX_TOKEN, t[0] + t[1]))
    ),
    max_size=6,
).map(lambda rs: _disjoint(sorted(rs)))


def _disjoint(rs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in rs:
        if out and s <= out[-1][1]:
            s = out[-1][1] + 1
        if s <= e:
            out.append((s, e))
    return out


@given(ranges)
def test_slices_cover_exactly_the_ranges_each_inside_one_slice(rs):
    slices = purge_slices(rs)
    pieces = [piece for part in slices for piece in part]
    assert sum(e - s + 1 for s, e in pieces) == sum(e - s + 1 for s, e in rs)
    assert pieces == sorted(pieces)
    for part in slices:
        assert len({s // WIDTH for s, _ in part} | {e // WIDTH for _, e in part}) == 1
    for s, e in pieces:
        assert any(rs_ <= s and e <= re_ for rs_, re_ in rs)


def test_a_big_store_is_purged_in_more_slices_each_about_a_bounded_share_of_its_tables():
    # Up to 16 x PURGE_SLICE_BYTES: sixteen slices; beyond, one more per PURGE_SLICE_BYTES, so
    # no slice's rewrite (which holds off compactions) grows with the store.
    assert purge_slice_count(0) == PURGE_SLICES == 16
    assert purge_slice_count(16 * PURGE_SLICE_BYTES) == 16
    assert purge_slice_count(16 * PURGE_SLICE_BYTES + 1) == 17
    hundred_gb = 100 * 10**9
    count = purge_slice_count(hundred_gb)
    assert hundred_gb / count <= PURGE_SLICE_BYTES
    slices = purge_slices([(0, MAX_TOKEN)], count)
    assert len(slices) == count
    assert slices[0][0][0] == 0 and slices[-1][-1][1] == MAX_TOKEN
