"""Proposing ring changes (cluster/proposals.py) in process: every node a real TransitionDriver
with its own ring record, membership and store, the nodes' RPCs (PROPOSE, RING_RECORD) routed
to each other's handlers through the driver's `call` seam. The drivers' loops do not run, so a
proposed transition stays proposed: these tests are about who proposes and which change wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from limedb.cluster import rpc
from limedb.cluster.handed_off import HandedOff
from limedb.cluster.membership import Membership
from limedb.cluster.proposals import Proposal, ProposerUnavailable
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.ring.store import RingStore
from limedb.cluster.streaming import RangeStreams
from limedb.cluster.transition_driver import TransitionDriver
from limedb.cluster.transitions import Change
from limedb.hlc import HLC
from limedb.storage import Engine, EngineOptions

MEMBERS = ("n1", "n2", "n3")
NEWCOMERS = ("n4", "n5")
DEAD_AFTER_S = 11.0  # past the failure detector's default dead_after_s (10 s)


def url(node: str) -> str:
    return f"http://{node}:8484"


def join(node: str) -> Change:
    return Change.join(node, url(node))


class ManualClock:
    """The failure detector's clock: it moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Node:
    node_id: str
    membership: Membership
    clock: ManualClock
    keeper: RingKeeper
    driver: TransitionDriver

    def hear(self, *nodes: str) -> None:
        """Heartbeats from `nodes` arrive here (they are alive in this node's view)."""
        for node in nodes:
            self.membership.detector.heartbeat(node)

    def lose(self, node: str) -> None:
        """`node` falls silent in this node's view until it is judged dead; others stay."""
        self.clock.now += DEAD_AFTER_S
        self.hear(*(n for n in self.membership.detector.watched() if n != node))

    @property
    def transition_id(self) -> str | None:
        state = self.keeper.state
        return None if state is None or state.transition is None else state.transition.id


@dataclass
class Cluster:
    """Three ring members and two newcomers (started with seeds, no ring yet), all alive in
    every view. A node in `down` refuses every call although the others think it alive."""

    nodes: dict[str, Node]
    down: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (from, to, kind)

    def __getitem__(self, node: str) -> Node:
        return self.nodes[node]

    def caller(self, source: str) -> Callable:
        async def call(node: str, kind: int, payload: bytes, timeout_s: float) -> bytes:
            self.calls.append((source, node, kind))
            await asyncio.sleep(0)  # a real call yields to the loop before anything arrives
            if node in self.down or node not in self.nodes:
                raise rpc.PeerUnavailable(f"{node}: connection refused")
            target = self.nodes[node].driver
            if kind == rpc.RING_RECORD:
                return target.records.handle(payload)
            assert kind == rpc.PROPOSE, kind
            return await target.proposals.handle(payload)

        return call

    def forwarded(self) -> list[tuple[str, str]]:
        return [(src, dst) for src, dst, kind in self.calls if kind == rpc.PROPOSE]

    def transition_ids(self, nodes: tuple[str, ...] = MEMBERS) -> set[str | None]:
        """The transition each of `nodes` holds (by default the ring members)."""
        return {self.nodes[node].transition_id for node in nodes}


@pytest.fixture
def ring_cluster(tmp_path: Path) -> Iterator[Callable[[], Cluster]]:
    engines: list[Engine] = []

    def build() -> Cluster:
        ring = Ring({n: url(n) for n in MEMBERS}, vnodes=8)
        cluster = Cluster({})
        for node_id in MEMBERS + NEWCOMERS:
            home = tmp_path / node_id
            home.mkdir()
            engine = Engine.open(home / "data", EngineOptions(offload_workers=0))
            engines.append(engine)
            clock = ManualClock()
            member = node_id in MEMBERS
            membership = Membership(
                node_id,
                url(node_id),
                ring if member else None,
                seeds=() if member else (url("n1"),),
                clock=clock,
            )
            keeper = RingKeeper(
                membership, RingStore(home), RingRecord(ring, 3) if member else None
            )
            streams = RangeStreams(engine, HLC(), HandedOff(home))
            driver = TransitionDriver(node_id, keeper, membership, streams, cluster.caller(node_id))
            cluster.nodes[node_id] = Node(node_id, membership, clock, keeper, driver)
        for node in cluster.nodes.values():
            node.hear(*(n for n in MEMBERS + NEWCOMERS if n != node.node_id))
        return cluster

    yield build
    for engine in engines:
        engine.close()


def run(scenario) -> None:
    asyncio.run(scenario)


def accepted_id(proposal: Proposal) -> str:
    assert proposal.accepted, proposal.error
    assert proposal.transition is not None
    return proposal.transition["id"]


# ---------------------------------------------------------------------------- the proposer


def test_the_proposer_is_the_first_live_ring_member_by_id(ring_cluster):
    c = ring_cluster()
    for node in MEMBERS:
        assert c[node].driver.proposals.proposer(c[node].keeper.state) == "n1"
    c["n3"].lose("n1")
    assert c["n3"].driver.proposals.proposer(c["n3"].keeper.state) == "n2"
    assert c["n2"].driver.proposals.proposer(c["n2"].keeper.state) == "n1"


def test_a_change_asked_of_any_node_is_proposed_by_the_proposer_and_known_everywhere(
    ring_cluster,
):
    async def scenario():
        c = ring_cluster()
        proposal = await c["n3"].driver.proposals.submit(join("n4"))
        tid = accepted_id(proposal)
        assert c.forwarded() == [("n3", "n1")]
        assert proposal.transition["change"] == "join n4 (http://n4:8484)"
        assert proposal.transition["phase"] == "proposed"
        # The proposer pushed its record to every node it names before answering.
        assert c.transition_ids(MEMBERS + ("n4",)) == {tid}
        assert RingStore(c["n1"].keeper.store.path.parent).load().transition.id == tid

    run(scenario())


def test_a_change_asked_of_the_proposer_is_not_forwarded(ring_cluster):
    async def scenario():
        c = ring_cluster()
        accepted_id(await c["n1"].driver.proposals.submit(join("n4")))
        assert c.forwarded() == []

    run(scenario())


def test_a_second_change_while_one_runs_is_refused_naming_the_running_one(ring_cluster):
    async def scenario():
        c = ring_cluster()
        first = accepted_id(await c["n2"].driver.proposals.submit(join("n4")))
        second = await c["n3"].driver.proposals.submit(join("n5"))
        assert not second.accepted and second.running_id == first
        assert second.error
        assert c.transition_ids() == {first}

    run(scenario())


def test_a_retry_of_the_running_change_is_accepted_as_the_same_transition(ring_cluster):
    """A client retrying after a timeout, or an operator's reconcile loop, asks again."""

    async def scenario():
        c = ring_cluster()
        first = accepted_id(await c["n2"].driver.proposals.submit(join("n4")))
        again = await c["n3"].driver.proposals.submit(join("n4"))
        assert accepted_id(again) == first

    run(scenario())


@pytest.mark.parametrize("through", [("n2", "n3"), ("n3", "n2"), ("n1", "n2")])
def test_two_changes_asked_at_the_same_moment_one_wins_and_the_other_names_it(
    ring_cluster, through
):
    async def scenario():
        c = ring_cluster()
        a, b = await asyncio.gather(
            c[through[0]].driver.proposals.submit(join("n4")),
            c[through[1]].driver.proposals.submit(join("n5")),
        )
        assert a.accepted != b.accepted, (a, b)
        winner, loser = (a, b) if a.accepted else (b, a)
        assert loser.running_id == accepted_id(winner)
        assert c.transition_ids() == {accepted_id(winner)}

    run(scenario())


@pytest.mark.parametrize("first", ["n1", "n2"])
def test_two_nodes_that_both_think_they_are_the_proposer_settle_on_one_winner(ring_cluster, first):
    """n2 has judged n1 dead, n1 is alive: both propose. The record exchange before either
    answers makes the same transition win on both, and only its proposer answers 202."""

    async def scenario():
        c = ring_cluster()
        c["n2"].lose("n1")
        assert c["n2"].driver.proposals.proposer(c["n2"].keeper.state) == "n2"
        changes = {"n1": join("n4"), "n2": join("n5")}
        second = "n2" if first == "n1" else "n1"
        a, b = await asyncio.gather(
            c[first].driver.proposals.submit(changes[first]),
            c[second].driver.proposals.submit(changes[second]),
        )
        assert c.forwarded() == [], "each proposed on its own"
        assert a.accepted != b.accepted, (a, b)
        winner, loser = (a, b) if a.accepted else (b, a)
        assert loser.running_id == accepted_id(winner)
        # Both were proposed (neither had the other's record yet); the exchange decided.
        assert "was proposed at the same time" in loser.error
        assert c.transition_ids() == {accepted_id(winner)}

    run(scenario())


def test_a_proposer_that_does_not_answer_is_bypassed_and_the_change_proposed_here(
    ring_cluster,
):
    async def scenario():
        c = ring_cluster()
        c.down.add("n1")  # still alive in n3's view: it died a moment ago
        tid = accepted_id(await c["n3"].driver.proposals.submit(join("n4")))
        assert c.forwarded() == [("n3", "n1")]
        assert c["n3"].transition_id == tid and c["n2"].transition_id == tid
        assert c["n1"].transition_id is None

    run(scenario())


def test_a_node_that_has_not_learned_the_ring_refuses_instead_of_guessing(ring_cluster):
    async def scenario():
        c = ring_cluster()
        proposal = await c["n4"].driver.proposals.submit(join("n5"))
        assert not proposal.accepted and "has not learned the ring" in proposal.error
        assert c.calls == [] and c.transition_ids() == {None}

    run(scenario())


def test_no_live_ring_member_is_proposer_unavailable(ring_cluster):
    async def scenario():
        c = ring_cluster()
        await c["n1"].driver.proposals.submit(join("n4"))
        c.calls.clear()
        n4 = c["n4"]  # has the record now, and sees every ring member die
        n4.clock.now += DEAD_AFTER_S
        with pytest.raises(ProposerUnavailable):
            await n4.driver.proposals.submit(join("n5"))
        assert c.calls == []

    run(scenario())


def test_a_malformed_forwarded_change_is_a_bad_request(ring_cluster):
    async def scenario():
        c = ring_cluster()
        for body in (b"{", b"[]", orjson.dumps({"node_id": "n4"})):
            with pytest.raises(rpc.RpcError) as err:
                await c["n1"].driver.proposals.handle(body)
            assert err.value.code == 400
        assert c.transition_ids() == {None}

    run(scenario())


def test_a_proposal_survives_its_trip_over_the_wire():
    proposal = Proposal.refused("busy", running_id="join-e2-abc")
    assert Proposal.from_record(orjson.loads(orjson.dumps(proposal.to_record()))) == proposal
    accepted = Proposal(True, {"id": "join-e2-abc", "phase": "proposed"})
    assert Proposal.from_record(accepted.to_record()) == accepted
