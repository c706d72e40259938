"""In-process nodes gossiping through a fake transport find each other, notice a paused node
within the detector's period, and see it alive again as soon as it speaks.

The transport is the one stand-in here: messages go through a JSON round trip to the target's
`Membership.handle`, and a "paused" node's messages hang like a SIGSTOPped process's would.
"""

import asyncio
import random

import orjson
import pytest
from limedb.cluster.failure import DetectorConfig, Liveness
from limedb.cluster.gossip import GossipError
from limedb.cluster.membership import GossipLoop, LivenessChange, Membership
from limedb.cluster.ring.placement import Ring
from support.wait import wait_for_async

INTERVAL = 0.1
# The production detector scaled down ten times with the gossip interval.
FAST_DETECTOR = DetectorConfig(
    min_std_s=0.05, acceptable_pause_s=0.1, first_interval_s=INTERVAL, dead_after_s=1.0
)


class FakeNetwork:
    """Routes messages by URL to in-process nodes; paused nodes neither answer nor gossip."""

    def __init__(self) -> None:
        self.nodes: dict[str, Membership] = {}
        self.loops: dict[str, GossipLoop] = {}
        self.paused: set[str] = set()
        self.messages = 0

    def add(self, membership: Membership) -> GossipLoop:
        url = membership.node_url
        self.nodes[url] = membership

        async def send(peer_url: str, message: dict) -> dict:
            if url in self.paused:
                await asyncio.Event().wait()
            if peer_url not in self.nodes:
                raise ConnectionRefusedError(peer_url)
            if peer_url in self.paused:
                await asyncio.Event().wait()
            self.messages += 1
            reply = self.nodes[peer_url].handle(orjson.loads(orjson.dumps(message)))
            return orjson.loads(orjson.dumps(reply))

        loop = GossipLoop(membership, send, interval_s=INTERVAL, rng=random.Random(len(self.nodes)))
        self.loops[url] = loop
        return loop

    async def start(self) -> None:
        for loop in self.loops.values():
            await loop.start()

    async def stop(self) -> None:
        for loop in self.loops.values():
            await loop.stop()


def urls(n: int) -> list[str]:
    return [f"http://127.0.0.{i + 1}:8484" for i in range(n)]


def member(url: str, ring: Ring | None, seeds=(), generation: int = 1) -> Membership:
    return Membership(
        url,
        url,
        ring,
        seeds=seeds,
        generation=generation,
        gossip_interval_s=INTERVAL,
        detector_config=FAST_DETECTOR,
    )


def everyone_sees(nodes, target: str, liveness: Liveness) -> bool:
    return all(m.liveness(target) is liveness for m in nodes if m.node_id != target)


def test_nodes_from_a_static_member_list_see_each_other_alive():
    async def scenario():
        ring = Ring(urls(4), vnodes=8)
        net = FakeNetwork()
        nodes = [member(u, ring) for u in urls(4)]
        for m in nodes:
            net.add(m)
        await net.start()
        try:
            await wait_for_async(
                lambda: all(
                    m.snapshot().peer(u) and m.snapshot().peer(u).version > 2
                    for m in nodes
                    for u in urls(4)
                    if u != m.node_id
                ),
                what="every node hearing every other",
            )
            for m in nodes:
                assert all(m.is_alive(u) for u in urls(4))
                assert m.url_of(urls(4)[2]) == urls(4)[2]
        finally:
            await net.stop()

    asyncio.run(scenario())


def test_a_paused_node_is_suspected_then_dead_and_alive_again_once_resumed():
    async def scenario():
        ring = Ring(urls(3), vnodes=8)
        net = FakeNetwork()
        nodes = [member(u, ring) for u in urls(3)]
        events: list[LivenessChange] = []
        for m in nodes:
            net.add(m)
        nodes[0].add_listener(events.append)
        victim = urls(3)[2]
        await net.start()
        try:
            await wait_for_async(
                lambda: any(e.node_id == victim and e.new is Liveness.ALIVE for e in events),
                what="first heartbeat from the victim",
            )
            net.paused.add(victim)
            await wait_for_async(
                lambda: (
                    everyone_sees(nodes[:2], victim, Liveness.SUSPECT)
                    or everyone_sees(nodes[:2], victim, Liveness.DEAD)
                ),
                what="suspicion",
            )
            await wait_for_async(
                lambda: everyone_sees(nodes[:2], victim, Liveness.DEAD), what="death"
            )
            assert nodes[0].liveness(urls(3)[1]) is Liveness.ALIVE
            net.paused.discard(victim)
            await wait_for_async(
                lambda: everyone_sees(nodes[:2], victim, Liveness.ALIVE),
                timeout_s=2.0,
                what="the resumed node alive again",
            )
        finally:
            await net.stop()
        victim_events = [(e.old, e.new) for e in events if e.node_id == victim]
        assert victim_events[0] == (None, Liveness.ALIVE)
        assert (Liveness.SUSPECT, Liveness.DEAD) in victim_events
        assert victim_events[-1] == (Liveness.DEAD, Liveness.ALIVE)
        assert all(e.url == victim for e in events if e.node_id == victim)

    asyncio.run(scenario())


def test_a_node_started_with_seeds_learns_the_ring_and_every_member():
    async def scenario():
        ring = Ring(urls(3), vnodes=8, epoch=4)
        net = FakeNetwork()
        nodes = [member(u, ring) for u in urls(3)]
        newcomer = member("http://127.0.0.9:8484", None, seeds=[urls(3)[0] + "/"])
        rings = []
        newcomer.add_ring_listener(rings.append)
        assert newcomer.ring is None
        for m in [*nodes, newcomer]:
            net.add(m)
        await net.start()
        try:
            await wait_for_async(lambda: newcomer.ring == ring, what="the ring")
            await wait_for_async(
                lambda: (
                    all(newcomer.is_alive(u) for u in urls(3))
                    and all(u in newcomer.snapshot().peer(u).url for u in urls(3))
                ),
                what="members",
            )
            # The others learn of the newcomer too, though it owns nothing (joining is the
            # next step's job).
            await wait_for_async(
                lambda: all(m.snapshot().peer(newcomer.node_id) for m in nodes),
                what="newcomer known",
            )
        finally:
            await net.stop()
        assert rings == [ring]
        assert not nodes[0].snapshot().peer(newcomer.node_id).in_ring

    asyncio.run(scenario())


def test_a_restarted_node_is_recognised_by_its_new_generation():
    async def scenario():
        ring = Ring(urls(2), vnodes=8)
        net = FakeNetwork()
        a, b = member(urls(2)[0], ring), member(urls(2)[1], ring, generation=10)
        net.add(a)
        net.add(b)
        await net.start()
        try:
            await wait_for_async(lambda: (a.snapshot().peer(b.node_id).version or 0) > 5, what="b")
            await net.loops[b.node_url].stop()
            reborn = member(urls(2)[1], ring, generation=11)
            await net.add(reborn).start()
            await wait_for_async(
                lambda: a.snapshot().peer(b.node_id).generation == 11, what="reborn"
            )
            assert a.is_alive(b.node_id)
        finally:
            await net.stop()

    asyncio.run(scenario())


def test_a_node_with_neither_ring_nor_seeds_is_a_cluster_of_one():
    m = Membership("solo", "http://solo:8484")
    assert m.ring == Ring({"solo": "http://solo:8484"})
    assert m.peer_ids() == []
    assert m.gossip_targets(random.Random(0)) == []
    assert m.is_alive("solo")


def test_gossip_targets_pick_a_live_peer_sometimes_a_down_one_and_seeds_when_alone():
    clock = [0.0]
    ring = Ring(urls(4), vnodes=4)
    m = Membership(
        urls(4)[0], urls(4)[0], ring, seeds=[urls(4)[1], urls(4)[0]], clock=lambda: clock[0]
    )
    rng = random.Random(1)
    picks = [m.gossip_targets(rng) for _ in range(300)]
    assert all(1 <= len(p) <= 2 and urls(4)[0] not in p for p in picks)
    clock[0] = 1000.0  # everyone silent for ages: all dead
    assert all(not m.is_alive(u) for u in urls(4)[1:])
    picks = [m.gossip_targets(rng) for _ in range(300)]
    # No live peer: always a seed, and often one of the dead to find out they are back.
    assert all(urls(4)[1] in p for p in picks)
    assert any(len(p) == 2 for p in picks)


def test_listeners_may_be_coroutines_and_a_failing_listener_does_not_stop_others():
    async def scenario():
        clock = [0.0]
        m = Membership(
            "a", "http://a", Ring({"a": "http://a", "b": "http://b"}), clock=lambda: clock[0]
        )
        got: list[LivenessChange] = []

        async def on_change(change):
            got.append(change)

        def broken(change):
            raise RuntimeError("listener bug")

        m.add_listener(broken)
        m.add_listener(on_change)
        clock[0] = 100.0
        assert [c.new for c in m.check()] == [Liveness.DEAD]
        await asyncio.sleep(0)
        assert [(c.node_id, c.new) for c in got] == [("b", Liveness.DEAD)]
        assert m.check() == []

    asyncio.run(scenario())


@pytest.mark.parametrize("msg", [None, {}, {"type": "ack", "from": "x"}, {"type": "syn"}])
def test_handle_rejects_what_is_not_a_well_formed_syn_or_ack2(msg):
    with pytest.raises(GossipError):
        Membership("a", "http://a").handle(msg)


def test_a_peers_announced_address_wins_over_the_ring_record():
    async def scenario():
        ring = Ring({"lime-0": "http://127.0.0.1:8484", "lime-1": "http://127.0.0.2:8484"})
        a = Membership(
            "lime-0",
            "http://127.0.0.1:8484",
            ring,
            gossip_interval_s=INTERVAL,
            detector_config=FAST_DETECTOR,
        )
        # lime-1 came back on a new address; the ring record still names the old one.
        b = Membership(
            "lime-1",
            "http://127.0.0.7:8484",
            ring,
            gossip_interval_s=INTERVAL,
            detector_config=FAST_DETECTOR,
            internal_addr="127.0.0.7:9484",
        )
        net = FakeNetwork()
        net.add(a)
        net.nodes["http://127.0.0.2:8484"] = b  # the old address still reaches it
        net.add(b)
        await net.start()
        try:
            await wait_for_async(
                lambda: a.url_of("lime-1") == "http://127.0.0.7:8484", what="new url"
            )
            assert a.internal_addr_of("lime-1") == "127.0.0.7:9484"
            assert a.ring.url_of("lime-1") == "http://127.0.0.2:8484"
        finally:
            await net.stop()

    asyncio.run(scenario())


def test_two_groups_that_never_met_merge_through_a_common_seed():
    async def scenario():
        left, right = urls(4)[:2], urls(4)[2:]
        ring = Ring(urls(4), vnodes=8)
        net = FakeNetwork()
        # The right-hand nodes know nothing but the seed (left[0]); the left ones start from
        # a ring of only themselves, until the seed adopts the full one.
        nodes = [member(u, Ring(left if u in left else right, vnodes=8)) for u in left]
        nodes += [member(u, None, seeds=[left[0]]) for u in right]
        nodes[0].adopt_ring(ring)
        for m in nodes:
            net.add(m)
        await net.start()
        try:
            await wait_for_async(lambda: all(m.ring == ring for m in nodes), what="one ring")
            await wait_for_async(
                lambda: all(m.is_alive(u) for m in nodes for u in urls(4)),
                what="everyone alive everywhere",
            )
        finally:
            await net.stop()

    asyncio.run(scenario())
