"""The hybrid logical clock orders every stamp after everything it has seen."""

import pytest
from limedb.hlc import HLC, MAX_TIMESTAMP, ClockOffsetError, millis_of, pack, within_bound


def test_now_is_strictly_increasing_even_when_wall_clock_stands_still():
    clock = HLC(wall=lambda: 1_000)
    stamps = [clock.now() for _ in range(1000)]
    assert stamps == sorted(set(stamps))
    assert millis_of(stamps[0]) == 1_000


def test_wall_clock_going_backwards_does_not_move_the_clock_back():
    walls = iter([5_000, 4_000, 3_000])
    clock = HLC(wall=lambda: next(walls))
    a, b, c = clock.now(), clock.now(), clock.now()
    assert a < b < c


def test_observe_orders_later_stamps_after_a_remote_one_from_the_future():
    clock = HLC(wall=lambda: 1_000, max_offset_ms=10_000)
    remote = pack(9_000, 7)
    merged = clock.observe(remote)
    assert merged > remote
    assert clock.now() > merged


TEN_YEARS_MS = 10 * 365 * 86_400_000


@pytest.mark.parametrize(
    "remote",
    [MAX_TIMESTAMP, pack(1_700_000_000_000 + TEN_YEARS_MS), pack(1_700_000_000_000 + 5_001)],
    ids=["2^64-1", "ten years ahead", "just beyond the bound"],
)
def test_observe_refuses_to_adopt_a_timestamp_beyond_the_maximum_offset(remote):
    wall = 1_700_000_000_000
    clock = HLC(wall=lambda: wall, max_offset_ms=5_000)
    before = clock.now()
    merged = clock.observe(remote)
    assert millis_of(merged) == wall and merged > before
    assert clock.not_adopted == 1
    # The clock never left the wall clock, and keeps stamping in range: nothing overflows.
    stamps = [clock.now() for _ in range(70_000)]
    assert stamps == sorted(set(stamps)) and stamps[-1] < MAX_TIMESTAMP
    assert millis_of(stamps[-1]) <= wall + 2
    with pytest.raises(ClockOffsetError, match="ahead of this node's clock"):
        clock.after(remote)


def test_observe_adopts_a_timestamp_within_the_maximum_offset():
    clock = HLC(wall=lambda: 1_000_000, max_offset_ms=5_000)
    remote = pack(1_005_000, 3)
    assert clock.observe(remote) > remote
    assert clock.after(remote) > remote
    assert clock.not_adopted == 0


def test_within_bound_rejects_what_the_encoding_cannot_hold():
    assert within_bound(pack(1_000), 1_000, 0)
    assert not within_bound(-1, 1_000, 5_000)
    assert not within_bound(MAX_TIMESTAMP + 1, 1 << 60, 5_000)
    assert not within_bound(MAX_TIMESTAMP, 1_000, 5_000)
