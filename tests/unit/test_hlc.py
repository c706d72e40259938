"""The hybrid logical clock orders every stamp after everything it has seen."""

from limedb.hlc import HLC, millis_of, pack


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
    clock = HLC(wall=lambda: 1_000)
    remote = pack(9_000, 7)
    merged = clock.observe(remote)
    assert merged > remote
    assert clock.now() > merged
