"""Gossip exchanges spread every node's newest heartbeat and the newest ring to everyone."""

import random

import orjson
import pytest
from limedb.cluster.gossip import GossipError, GossipState, HeartbeatState
from limedb.cluster.ring.placement import Ring


def wire(msg):
    """What the transport does to a message: JSON out and back in."""
    return orjson.loads(orjson.dumps(msg))


def exchange(initiator: GossipState, peer: GossipState) -> None:
    ack = wire(peer.on_syn(wire(initiator.make_syn())))
    peer.on_ack2(wire(initiator.on_ack(ack)))


def make_node(i: int, ring: Ring | None = None, generation: int = 100) -> GossipState:
    return GossipState(f"n{i}", f"http://127.0.0.{i + 1}:8484", generation, ring)


def test_one_exchange_gives_both_sides_each_others_newest_state():
    a, b = make_node(0), make_node(1)
    a.beat(), a.beat(), b.beat()
    exchange(a, b)
    assert a.states["n1"] == b.own
    assert b.states["n0"] == a.own
    assert b.states["n0"].advertise_url == "http://127.0.0.1:8484"


def test_many_nodes_converge_on_every_heartbeat_within_a_few_rounds():
    rng = random.Random(3)
    nodes = [make_node(i) for i in range(12)]
    # Everyone only knows n0 (the seed) to begin with.
    for node in nodes[1:]:
        exchange(node, nodes[0])
    for _ in range(12):
        for node in nodes:
            node.beat()
        for node in nodes:
            exchange(node, rng.choice([p for p in nodes if p is not node]))
    # Freeze the heartbeats and let a few more rounds carry the last ones everywhere.
    for _ in range(8):
        for node in nodes:
            exchange(node, rng.choice([p for p in nodes if p is not node]))
    for node in nodes:
        assert node.states == nodes[0].states
        assert {s.version for s in node.states.values()} == {12}


def test_the_newest_ring_spreads_to_every_node():
    rng = random.Random(5)
    old = Ring({f"n{i}": f"http://127.0.0.{i + 1}:8484" for i in range(6)}, vnodes=8, epoch=1)
    nodes = [make_node(i, old) for i in range(6)]
    nodes[0].adopt_ring(old.with_member("n6", "http://127.0.0.7:8484"))
    for _ in range(10):
        for node in nodes:
            exchange(node, rng.choice([p for p in nodes if p is not node]))
    assert all(node.ring.epoch == 2 and "n6" in node.ring for node in nodes)


def test_a_node_without_a_ring_learns_it_from_its_seed_and_never_replaces_it_with_none():
    ring = Ring(["http://a", "http://b"], vnodes=4, epoch=3)
    seed, fresh = (
        GossipState("http://a", "http://a", 1, ring),
        GossipState("http://b", "http://b", 1),
    )
    seen = []
    fresh.on_ring = seen.append
    exchange(fresh, seed)
    assert fresh.ring == ring and seen == [ring]
    exchange(seed, fresh)
    assert seed.ring == ring


def test_an_older_ring_is_not_taken_in_either_direction():
    new, old = Ring(["x"], epoch=5), Ring(["x", "y"], epoch=4)
    a, b = GossipState("x", "x", 1, new), GossipState("y", "y", 1, old)
    exchange(a, b)
    assert a.ring == new and b.ring == new
    c = GossipState("z", "z", 1, old)
    exchange(c, a)
    assert a.ring == new and c.ring == new


def test_nodes_bootstrapped_with_different_member_lists_agree_on_the_largest():
    rng = random.Random(9)
    full = {f"n{i}": f"http://127.0.0.{i + 1}:8484" for i in range(4)}
    nodes = [
        make_node(i, Ring({k: v for k, v in full.items() if k in (f"n{i}", "n0")}, vnodes=4))
        for i in range(3)
    ]
    nodes.append(make_node(3, Ring(full, vnodes=4)))
    for _ in range(8):
        for node in nodes:
            exchange(node, rng.choice([p for p in nodes if p is not node]))
    assert all(node.ring == Ring(full, vnodes=4) for node in nodes)


def test_a_restarted_node_wins_with_its_new_generation_despite_a_lower_version():
    a, b = make_node(0, generation=100), make_node(1, generation=100)
    for _ in range(50):
        b.beat()
    exchange(a, b)
    assert a.states["n1"].version == 50
    reborn = make_node(1, generation=200)
    reborn.beat()
    exchange(reborn, a)
    assert a.states["n1"].clock == (200, 1)


def test_a_restart_with_the_same_generation_jumps_past_its_old_self():
    a, b = make_node(0), make_node(1, generation=100)
    for _ in range(30):
        b.beat()
    exchange(b, a)
    same_second = make_node(1, generation=100)
    exchange(same_second, a)
    assert same_second.own.generation == 101
    same_second.beat()
    exchange(same_second, a)
    assert a.states["n1"].clock == same_second.own.clock


def test_update_hook_sees_only_states_that_got_newer():
    calls = []
    a = GossipState(
        "a", "http://a", 1, on_update=lambda n, old, new: calls.append((n, new.version))
    )
    b = GossipState("b", "http://b", 1)
    b.beat()
    exchange(a, b)
    exchange(a, b)
    b.beat()
    exchange(b, a)
    assert calls == [("b", 1), ("b", 2)]


def test_status_and_address_changes_travel_with_the_heartbeat():
    a, b = make_node(0), make_node(1)
    b.set_status("leaving")
    b.set_advertise_url("http://10.9.9.9:8484")
    exchange(a, b)
    assert a.states["n1"].status == "leaving"
    assert a.states["n1"].advertise_url == "http://10.9.9.9:8484"
    with pytest.raises(ValueError):
        b.set_status("zombie")


@pytest.mark.parametrize(
    "msg",
    [
        None,
        [],
        {"type": "syn"},
        {"type": "syn", "from": "x", "digests": {"a": [1]}},
        {"type": "syn", "from": "x", "digests": {"a": [-1, 2]}},
        {"type": "syn", "from": "x", "digests": {"a": ["1", 2]}},
        {"type": "syn", "from": "x", "digests": {}, "ring": {"epoch": "x"}},
        {"type": "ack", "from": "x", "digests": {}},
    ],
)
def test_malformed_syn_is_rejected(msg):
    with pytest.raises(GossipError):
        make_node(0, Ring(["q"])).on_syn(msg)


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "ack", "from": "x", "updates": {"b": {"generation": 1}}},
        {"type": "ack", "from": "x", "updates": {"b": {"generation": 1, "version": 1}}},
        {
            "type": "ack",
            "from": "x",
            "updates": {"b": {"generation": 1, "version": 1, "advertise_url": "u", "status": "?"}},
        },
        {"type": "ack", "from": "x", "updates": [], "requests": []},
        {"type": "ack", "from": "x", "updates": {}, "requests": "n0"},
        {"type": "ack", "from": "x", "updates": {}, "ring": {"epoch": 1}},
    ],
)
def test_malformed_ack_is_rejected(msg):
    with pytest.raises(GossipError):
        make_node(0).on_ack(msg)


def test_heartbeat_state_round_trips_on_the_wire():
    state = HeartbeatState(7, 9, "http://h:1", "joining", "127.0.0.1:9484")
    assert HeartbeatState.from_wire(wire(state.to_wire())) == state
