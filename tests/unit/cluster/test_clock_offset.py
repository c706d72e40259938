"""Clock offsets from round trips, this node's offset from the majority, and the decisions
that follow: which timestamps are admitted and when the node stops stamping writes."""

from __future__ import annotations

import asyncio

import pytest
from limedb.cluster import rpc
from limedb.cluster.clock_offset import (
    PING_REPLY,
    ClockOffsets,
    ClockOffsetUnavailable,
    Sample,
    TimestampRefused,
    best_offset,
    beyond_majority,
    own_offset,
    sample,
)
from limedb.hlc import MAX_TIMESTAMP, pack

NOW_NS = 1_700_000_000_000 * 1_000_000


def test_a_round_trip_puts_the_peer_reading_at_its_midpoint():
    # Sent at wall 0 (monotonic 10.0), answered at monotonic 10.2; the peer read 2.1 s.
    s = sample(0, 10.0, 10.2, 2_100_000_000)
    assert s.rtt_ms == pytest.approx(200)
    assert s.offset_ms == pytest.approx(2_000)


def test_the_sample_with_the_smallest_round_trip_counts():
    samples = [Sample(2_300, 600, 0), Sample(2_010, 20, 0), Sample(1_700, 400, 0)]
    assert best_offset(samples) == 2_010
    assert best_offset([]) is None


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        ([], 0.0),
        ([-2_000, -4_000], 2_000),  # the node at +2 s of a cluster at -2 / 0 / +2
        ([2_000, 4_000], -2_000),  # the node at -2 s
        ([-2_000, 2_000], 0.0),  # the node on time
        ([-60_000, -60_000], 60_000),  # one node 60 s ahead of two
        ([60_000, 0], 0.0),  # a healthy node next to it
    ],
)
def test_own_offset_is_measured_against_the_median_node(peers, expected):
    assert own_offset(peers) == pytest.approx(expected)


def test_a_node_is_beyond_the_majority_only_when_most_peers_disagree():
    assert beyond_majority([-60_000, -60_000], peers=2, limit_ms=2_500)
    assert not beyond_majority([60_000, 0], peers=2, limit_ms=2_500)
    assert not beyond_majority([-2_000, -4_000], peers=2, limit_ms=2_500)  # +2 s: one far peer
    assert not beyond_majority([-60_000], peers=2, limit_ms=2_500)  # one peer unmeasured
    assert beyond_majority([-60_000], peers=1, limit_ms=2_500)  # two nodes: no one stamps
    assert not beyond_majority([], peers=0, limit_ms=2_500)  # a single node


def _offsets(peer_clocks: dict[str, int], own_ns: int) -> ClockOffsets:
    async def ping(node_id: str, _timeout_s: float) -> bytes:
        return PING_REPLY.pack(peer_clocks[node_id])

    return ClockOffsets(5_000, lambda: list(peer_clocks), ping, wall=lambda: own_ns)


def _measure(offsets: ClockOffsets, peers: list[str]) -> None:
    async def main() -> None:
        await asyncio.gather(*(offsets.probe(p) for p in peers))
        offsets.update()

    asyncio.run(main())


def test_a_node_sixty_seconds_ahead_stops_stamping_and_says_by_how_much():
    offsets = _offsets({"b": NOW_NS, "c": NOW_NS}, NOW_NS + 60_000_000_000)
    _measure(offsets, ["b", "c"])
    assert offsets.fenced and offsets.offset_ms == pytest.approx(60_000, abs=50)
    # The peer's clock is estimated at its reply plus half the round trip, so the message
    # says 60 s give or take that half (as the offset above): +59.950 to +60.049.
    said = r"\+(59\.9[5-9]|60\.0[0-4])\d s off the majority"
    with pytest.raises(ClockOffsetUnavailable, match=said):
        offsets.check_can_stamp()
    assert offsets.stats()["writes_allowed"] is False
    assert offsets.counters["writes_refused"] == 1


def test_a_lagging_node_admits_its_peers_timestamps_but_nothing_beyond_the_bound():
    lag = 60_000_000_000
    offsets = _offsets({"b": NOW_NS, "c": NOW_NS}, NOW_NS - lag)
    _measure(offsets, ["b", "c"])
    assert offsets.fenced
    # TTLs count from the majority's time, not this node's clock.
    assert offsets.physical_ms() == pytest.approx(NOW_NS // 1_000_000, abs=50)
    offsets.admit(pack(NOW_NS // 1_000_000 + 1_000))  # a healthy peer's fresh write
    for ts in (MAX_TIMESTAMP, pack(NOW_NS // 1_000_000 + 10 * 365 * 86_400_000)):
        with pytest.raises(TimestampRefused) as refused:
            offsets.admit(ts)
        assert refused.value.code == rpc.TIMESTAMP_REFUSED
    assert offsets.counters["timestamps_refused"] == 2


def test_a_cluster_within_the_bound_keeps_stamping():
    offsets = _offsets({"b": NOW_NS - 2_000_000_000, "c": NOW_NS - 4_000_000_000}, NOW_NS)
    _measure(offsets, ["b", "c"])
    assert not offsets.fenced and offsets.offset_ms == pytest.approx(2_000, abs=50)
    offsets.check_can_stamp()


def test_a_step_of_the_own_clock_counts_at_once_without_new_probes():
    # The nemesis (seed 1) found a node stepped 30 s ahead stamping writes on its stale
    # samples until the next probes; its samples are now corrected for its own steps.
    own = [NOW_NS]

    async def ping(node_id: str, _timeout_s: float) -> bytes:
        return PING_REPLY.pack(NOW_NS)

    offsets = ClockOffsets(5_000, lambda: ["b", "c"], ping, wall=lambda: own[0])
    _measure(offsets, ["b", "c"])
    offsets.check_can_stamp()
    for step_ns in (30_000_000_000, -30_000_000_000):
        own[0] = NOW_NS + step_ns
        with pytest.raises(ClockOffsetUnavailable, match="s off the majority"):
            offsets.check_can_stamp()
        assert offsets.offset_ms == pytest.approx(step_ns / 1e6, abs=100)
        # TTLs and admission keep counting from the majority's time.
        assert offsets.physical_ms() == pytest.approx(NOW_NS // 1_000_000, abs=50)
    own[0] = NOW_NS
    offsets.check_can_stamp()
