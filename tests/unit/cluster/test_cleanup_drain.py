"""Before a transition's cleanup purges the moved ranges from their old owners, its driver
pushes the cleanup record to every node and waits until each has finished the requests it
began before it had the record (RPC kind DRAIN, cluster/ring/exchange.py, counted by
cluster/inflight.py). In process: three nodes, each a real RingKeeper on its own directory with
a RecordExchange, their RPCs routed to each other's handlers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from limedb.cluster import rpc
from limedb.cluster.inflight import InFlight
from limedb.cluster.membership import Membership
from limedb.cluster.ring.exchange import RecordExchange
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.ring.store import RingStore
from limedb.cluster.transitions import Change, propose
from support.wait import wait_for_async

NODES = ("n1", "n2", "n3")


def url(node: str) -> str:
    return f"http://{node}:8484"


@dataclass
class Node:
    keeper: RingKeeper
    inflight: InFlight
    records: RecordExchange


@dataclass
class Nodes:
    """The nodes by id; one in `down` refuses the connection, one in `before_drain` is of the
    version before DRAIN (it answers NOT_FOUND, as an RpcServer does to an unknown kind)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    before_drain: set[str] = field(default_factory=set)

    def __getitem__(self, node: str) -> Node:
        return self.nodes[node]

    def caller(self) -> Callable:
        async def call(node: str, kind: int, payload: bytes, timeout_s: float) -> bytes:
            await asyncio.sleep(0)
            if node in self.down:
                raise rpc.PeerUnavailable(f"{node}: connection refused")
            records = self.nodes[node].records
            if kind == rpc.RING_RECORD:
                return records.handle(payload)
            assert kind == rpc.DRAIN, kind
            if node in self.before_drain:
                raise rpc.RpcError(rpc.NOT_FOUND, f"unknown request kind {kind}")
            return await asyncio.wait_for(records.handle_drain(payload), timeout_s)

        return call


def build(tmp_path: Path) -> tuple[Nodes, RingRecord]:
    """The three nodes on one ring, and the record of a transition n1 drives (the one to
    drain for)."""
    ring = Ring({n: url(n) for n in NODES}, vnodes=8)
    nodes = Nodes()
    for node_id in NODES:
        home = tmp_path / node_id
        home.mkdir()
        membership = Membership(node_id, url(node_id), ring, seeds=())
        keeper = RingKeeper(membership, RingStore(home), RingRecord(ring, 3))
        inflight = InFlight()
        records = RecordExchange(node_id, keeper, membership, nodes.caller(), inflight)
        nodes.nodes[node_id] = Node(keeper, inflight, records)
    changed = RingRecord(ring, 3).with_transition(propose(ring, 3, Change.set_rf(2), now_ms=1))
    nodes["n1"].keeper.adopt(changed)
    return nodes, changed


def holds(node: Node, record: RingRecord) -> bool:
    state = node.keeper.state
    return state is not None and state.transition == record.transition


def test_nothing_in_flight_is_drained_at_once_and_a_new_generation_counts_apart():
    async def scenario():
        inflight = InFlight()
        assert await inflight.drained(inflight.advance(), 0.0)
        before = inflight.begin()
        generation = inflight.advance()
        after = inflight.begin()
        assert inflight.older(generation) == 1
        assert not await inflight.drained(generation, 0.01), "a request of before is running"
        inflight.end(before)
        assert await inflight.drained(generation, 0.0), "one begun after does not count"
        inflight.end(after)
        assert inflight.older(inflight.advance()) == 0

    asyncio.run(scenario())


def test_the_driver_waits_until_every_node_has_the_record_and_finished_what_it_began_before(
    tmp_path: Path,
):
    async def scenario():
        nodes, changed = build(tmp_path)
        # n2 and the driver n1 each coordinate a request routed by the record before.
        early = {n: nodes[n].inflight.begin() for n in ("n1", "n2")}
        drain = asyncio.ensure_future(nodes["n1"].records.drain_everywhere(30.0))
        await wait_for_async(
            lambda: all(holds(nodes[n], changed) for n in NODES),
            what="every node to adopt the pushed record",
        )
        # Requests begun from now on route by the new record: they hold nothing up.
        late = nodes["n3"].inflight.begin()
        nodes["n1"].inflight.end(early["n1"])
        for _ in range(20):
            await asyncio.sleep(0)
        assert not drain.done(), "answered while n2 still ran a request routed by the old ring"
        nodes["n2"].inflight.end(early["n2"])
        assert await drain == []
        nodes["n3"].inflight.end(late)

    asyncio.run(scenario())


def test_nodes_that_cannot_confirm_are_named_for_the_grace(tmp_path: Path):
    async def scenario():
        nodes, _ = build(tmp_path)
        nodes.down.add("n2")
        nodes.before_drain.add("n3")
        assert sorted(await nodes["n1"].records.drain_everywhere(1.0)) == ["n2", "n3"]
        # A node whose request outlives the wait it was given answers NOT_DRAINED.
        nodes.down.clear()
        nodes.before_drain.clear()
        nodes["n3"].inflight.begin()
        assert await nodes["n1"].records.drain_everywhere(0.05) == ["n3"]

    asyncio.run(scenario())


def test_a_drain_without_a_record_or_with_garbage_is_refused_and_changes_nothing(
    tmp_path: Path,
):
    async def scenario():
        nodes, _ = build(tmp_path)
        before = nodes["n2"].keeper.state
        rng = random.Random(15)
        bodies = [b"", b"\x00\x00\x00\x05", b"\x00\x00\x00\x05[]", b"\xff\xff\xff\xff{}"]
        bodies += [rng.randbytes(rng.randrange(5, 200)) for _ in range(200)]
        for body in bodies:
            try:
                await nodes["n2"].records.handle_drain(body)
            except rpc.RpcError as exc:
                assert exc.code == 400, (body, exc)
            else:
                raise AssertionError(f"DRAIN {body!r} was accepted")
        assert nodes["n2"].keeper.state is before
        assert nodes["n2"].inflight.generation == 0, "a refused DRAIN started a generation"

    asyncio.run(scenario())
