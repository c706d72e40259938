"""The coordinator (cluster/coordinator.py) in process: quorum writes and reads over replicas
that are real `Replica`s on real engines, reached through the coordinator's own seams (the RPC
client and the membership view) instead of sockets, so each failure is exactly the one a test
names: a peer judged dead, a peer that fails the request, one that has not answered yet."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from limedb.cluster import rpc
from limedb.cluster.coordinator import Coordinator, required_acks
from limedb.cluster.failure import Liveness
from limedb.cluster.hints import HintStore
from limedb.cluster.replica import Mutation, Replica, Stored
from limedb.cluster.ring.placement import Ring
from limedb.cluster.service import Consistency, Unavailable
from limedb.cluster.transitions import WriteSet
from limedb.hlc import HLC, millis_of
from limedb.storage import Engine, EngineOptions
from support.wait import wait_for_async

NODES = ("n1", "n2", "n3")
LOCAL = "n1"


@dataclass
class View:
    """The coordinator's membership seam: a fixed ring and the liveness a test decides."""

    ring: Ring
    liveness_of: dict[str, Liveness] = field(default_factory=dict)

    def liveness(self, node_id: str) -> Liveness:
        return self.liveness_of.get(node_id, Liveness.ALIVE)

    def peer_liveness(self, node_id: str) -> Liveness:
        return self.liveness(node_id)

    def url_of(self, node_id: str) -> str | None:
        return self.ring.members.get(node_id)


class Peers:
    """The coordinator's RPC client seam: each peer answers READ and REPLICATE from its own
    real Replica, in process. A peer in `failing` answers PeerUnavailable (down although not
    yet judged dead); a peer in `held` has not answered until the test releases it."""

    def __init__(self, replicas: dict[str, Replica]) -> None:
        self.replicas = replicas
        self.failing: set[str] = set()
        self.held: dict[str, list[tuple[asyncio.Future, int, bytes]]] = {}
        self.requests: list[tuple[str, int]] = []
        self.replicated: dict[str, list[asyncio.Future]] = {}

    def durable(self, nodes: set[str]) -> bool:
        """Whether every write sent to `nodes` so far has been answered."""
        return all(
            n in self.replicated and all(f.done() for f in self.replicated[n]) for n in nodes
        )

    def peer(self, host: str, port: int) -> _Peer:
        return _Peer(self, host)

    def answer(self, node: str, kind: int, payload: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if node in self.failing:
            failed = loop.create_future()
            failed.set_exception(rpc.PeerUnavailable(f"{node} refused the connection"))
            return failed
        if kind == rpc.REPLICATE:
            applied = self.replicas[node].handle_replicate(payload)
            self.replicated.setdefault(node, []).append(applied)
            return applied
        assert kind == rpc.READ, kind
        answered = loop.create_future()
        answered.set_result(self.replicas[node].handle_read(payload))
        return answered

    def release(self, node: str) -> list[asyncio.Future]:
        """Let `node` answer what it holds; returns those answers (to await)."""
        answers = []
        for held, kind, payload in self.held.pop(node, []):
            self.answer(node, kind, payload).add_done_callback(
                lambda done, held=held: _copy(done, held)
            )
            answers.append(held)
        return answers


def _copy(done: asyncio.Future, into: asyncio.Future) -> None:
    if done.exception() is not None:
        into.set_exception(done.exception())
    else:
        into.set_result(done.result())


@dataclass
class _Peer:
    peers: Peers
    node: str

    def request(self, kind: int, payload: bytes, timeout_s: float) -> asyncio.Future:
        self.peers.requests.append((self.node, kind))
        if self.node in self.peers.held:
            pending = asyncio.get_running_loop().create_future()
            self.peers.held[self.node].append((pending, kind, payload))
            return pending
        return self.peers.answer(self.node, kind, payload)

    def request_then(self, kind: int, payload: bytes, timeout_s: float, answer: rpc.Answer) -> None:
        """`request`, answered through `answer(reply, error)` as rpc.PeerConnection does."""
        self.request(kind, payload, timeout_s).add_done_callback(
            lambda done: (
                answer(None, done.exception())
                if done.exception() is not None
                else answer(done.result(), None)
            )
        )


@dataclass
class Cluster:
    coordinator: Coordinator
    view: View
    peers: Peers
    replicas: dict[str, Replica]
    hints: HintStore

    def stored(self, node: str, key: bytes) -> Stored | None:
        return self.replicas[node].read(key)

    def values(self, key: bytes) -> dict[str, bytes | None]:
        return {n: (s.value if (s := self.stored(n, key)) else None) for n in self.replicas}

    def kill(self, *nodes: str) -> None:
        for node in nodes:
            self.view.liveness_of[node] = Liveness.DEAD

    def revive(self, *nodes: str) -> None:
        for node in nodes:
            self.view.liveness_of[node] = Liveness.ALIVE

    async def seed(self, node: str, key: bytes, value: bytes, ts: int, **kw) -> None:
        """Put a version straight into one replica (as a write that reached only it)."""
        await self.replicas[node].apply(Mutation(key, value, ts, **kw))


@pytest.fixture
def replica_set(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build a coordinator on LOCAL whose local replica and peers are real engines in tmp_path;
    every engine is closed afterwards. Call it inside the test's event loop."""
    engines: list[Engine] = []

    def engine(name: str) -> Engine:
        opened = Engine.open(tmp_path / name, EngineOptions(offload_workers=0))
        engines.append(opened)
        return opened

    def build(nodes: tuple[str, ...] = NODES, rf: int = 3, **options) -> Cluster:
        ring = Ring({n: f"http://{n}:8484" for n in nodes}, vnodes=16)
        replicas = {n: Replica(engine(n), HLC()) for n in nodes}
        peers = Peers(replicas)
        view = View(ring)
        deliver: list[Callable] = []
        hints = HintStore(engine("hints"), lambda node, m: deliver[0](node, m))
        coordinator = Coordinator(
            node_id=LOCAL,
            membership=view,
            replica=replicas[LOCAL],
            client=peers,  # type: ignore[arg-type]  # the client seam, see Peers
            address_of=lambda node: (node, 0),
            hints=hints,
            hlc=replicas[LOCAL].hlc,
            replication_factor=rf,
            **options,
        )
        deliver.append(coordinator.deliver_hint)
        return Cluster(coordinator, view, peers, replicas, hints)

    yield build
    for opened in engines:
        opened.close()


def run(scenario) -> None:
    asyncio.run(scenario)


# ---------------------------------------------------------------------------- write quorums


@pytest.mark.parametrize(
    ("consistency", "replicas", "acks"),
    [
        (Consistency.ONE, 3, 1),
        (Consistency.QUORUM, 3, 2),
        (Consistency.QUORUM, 5, 3),
        (Consistency.QUORUM, 1, 1),
        (Consistency.ALL, 3, 3),
    ],
)
def test_w_is_one_a_majority_or_every_replica(consistency, replicas, acks):
    assert required_acks(consistency, replicas) == acks


def test_a_write_reaches_every_replica_and_a_read_returns_it(replica_set):
    async def scenario():
        c = replica_set()
        ts = await c.coordinator.put(b"k", b"v1")
        await c.coordinator.drain()
        assert c.values(b"k") == {"n1": b"v1", "n2": b"v1", "n3": b"v1"}
        assert {c.stored(n, b"k").ts for n in NODES} == {ts}
        result = await c.coordinator.get(b"k")
        assert (result.value, result.ts) == (b"v1", ts)
        owner = c.view.ring.replicas(b"k", 3)[0]
        assert result.owner_url == f"http://{owner}:8484"

    run(scenario())


def test_a_quorum_write_returns_at_w_acks_without_waiting_for_the_slowest_replica(replica_set):
    async def scenario():
        c = replica_set()
        c.peers.held["n3"] = []
        await c.coordinator.put(b"k", b"v")  # n1 (local) and n2 are W = 2
        assert c.values(b"k") == {"n1": b"v", "n2": b"v", "n3": None}
        await asyncio.gather(*c.peers.release("n3"))
        assert c.stored("n3", b"k").value == b"v"
        assert c.hints.pending() == 0

    run(scenario())


def test_an_all_write_is_acknowledged_only_once_the_last_replica_has_it(replica_set):
    async def scenario():
        c = replica_set()
        c.peers.held["n3"] = []
        write = asyncio.ensure_future(c.coordinator.put(b"k", b"v", consistency=Consistency.ALL))
        await wait_for_async(
            lambda: c.stored("n2", b"k") is not None and c.peers.held["n3"],
            what="n2 applying the write and n3 holding its request",
        )
        assert not write.done(), "acknowledged before n3 answered"
        c.peers.release("n3")
        await write
        assert c.values(b"k") == {"n1": b"v", "n2": b"v", "n3": b"v"}

    run(scenario())


def test_a_delete_says_whether_a_live_value_existed_and_leaves_a_tombstone_everywhere(
    replica_set,
):
    async def scenario():
        c = replica_set()
        await c.coordinator.put(b"k", b"v")
        assert await c.coordinator.delete(b"k") is True
        assert await c.coordinator.delete(b"k") is False
        assert await c.coordinator.delete(b"never") is False
        await c.coordinator.drain()
        assert all(c.stored(n, b"k").tombstone for n in NODES)
        assert (await c.coordinator.get(b"k")).value is None

    run(scenario())


def test_every_replica_stores_the_same_expiry_counted_from_the_versions_own_clock(replica_set):
    async def scenario():
        c = replica_set()
        ts = await c.coordinator.put(b"k", b"v", ttl_ms=60_000, consistency=Consistency.ALL)
        assert {c.stored(n, b"k").expires_at_ms for n in NODES} == {millis_of(ts) + 60_000}
        assert (await c.coordinator.get(b"k")).expires_at_ms == millis_of(ts) + 60_000

    run(scenario())


# ---------------------------------------------------------------------------- hints, Unavailable


def test_a_dead_replica_gets_a_durable_hint_delivered_when_it_is_back(replica_set):
    async def scenario():
        c = replica_set()
        c.kill("n3")
        await c.coordinator.put(b"k", b"v")
        await c.coordinator.drain()
        assert ("n3", rpc.REPLICATE) not in c.peers.requests, "a dead replica is not asked"
        assert c.stored("n3", b"k") is None
        assert c.hints.pending("n3") == 1 and c.hints.pending() == 1
        c.revive("n3")
        assert await c.hints.replay("n3") == 1
        assert c.stored("n3", b"k").value == b"v"
        assert c.hints.pending() == 0

    run(scenario())


def test_a_replica_that_fails_the_write_gets_a_hint_and_the_quorum_still_holds(replica_set):
    async def scenario():
        c = replica_set()
        c.peers.failing.add("n2")
        await c.coordinator.put(b"k", b"v")
        await c.coordinator.drain()
        assert c.hints.pending("n2") == 1
        assert c.coordinator.counters["replica_write_failures"] == 1

    run(scenario())


def test_a_suspect_replica_still_gets_the_write_and_no_hint(replica_set):
    async def scenario():
        c = replica_set()
        c.view.liveness_of["n3"] = Liveness.SUSPECT
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ALL)
        await c.coordinator.drain()
        assert c.stored("n3", b"k").value == b"v" and c.hints.pending() == 0

    run(scenario())


def test_fewer_than_w_reachable_replicas_is_unavailable_and_writes_nothing(replica_set):
    async def scenario():
        c = replica_set()
        c.kill("n2", "n3")
        with pytest.raises(Unavailable, match="1 of 3 replicas reachable, 2 needed") as err:
            await c.coordinator.put(b"k", b"v")
        assert err.value.retry_after > 0
        await c.coordinator.drain()
        assert c.values(b"k") == {"n1": None, "n2": None, "n3": None}
        assert c.hints.pending() == 0
        assert c.coordinator.counters["writes_unavailable"] == 1
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ONE)  # W = 1 is met

    run(scenario())


def test_fewer_than_w_acknowledgements_is_unavailable_and_hints_every_failed_replica(
    replica_set,
):
    async def scenario():
        c = replica_set()
        c.peers.failing.update({"n2", "n3"})
        with pytest.raises(Unavailable, match="of 3 replicas acknowledged, 2 needed"):
            await c.coordinator.put(b"k", b"v")
        # The write may still reach some replicas (here the local one); the ones that failed
        # get it later from their hints.
        await wait_for_async(lambda: c.stored(LOCAL, b"k") is not None, what="the local write")
        await c.coordinator.drain()
        assert c.hints.pending("n2") == 1 and c.hints.pending("n3") == 1

    run(scenario())


# ---------------------------------------------------------------------------- transitions


@dataclass
class Routing:
    """The coordinator's routing seam during a transition: one write set for every key."""

    plan: WriteSet

    def settled_replicas(self, key: bytes) -> tuple[str, ...] | None:
        return None  # a transition runs

    def write_set(self, key: bytes) -> WriteSet:
        return self.plan

    def read_replicas(self, key: bytes) -> tuple[str, ...]:
        return self.plan.old


TRANSITION_NODES = ("n1", "n2", "n3", "n4", "n5")
# n5 joins and takes n2's place; the coordinator (n1) is a replica in neither set.
OLD, NEW = ("n2", "n3", "n4"), ("n3", "n4", "n5")


def test_a_transition_write_goes_to_old_and_new_replicas(replica_set):
    async def scenario():
        c = replica_set(TRANSITION_NODES)
        c.coordinator.routing = Routing(WriteSet(OLD, NEW))
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ALL)
        assert c.values(b"k") == {"n1": None, "n2": b"v", "n3": b"v", "n4": b"v", "n5": b"v"}

    run(scenario())


@pytest.mark.parametrize("failures", ["first", "last"])
def test_a_transition_write_succeeds_exactly_when_w_of_old_and_w_of_new_acknowledge(
    replica_set, failures
):
    """Every combination of failing replicas, failing before or after the others acknowledged:
    W of the old set alone (the readers of the moment) or W of the new set alone (the readers
    after commit) is not enough."""

    async def scenario():
        c = replica_set(TRANSITION_NODES)
        c.coordinator.routing = Routing(WriteSet(OLD, NEW))
        peers = sorted(set(OLD) | set(NEW))
        hinted = 0
        for i, failing in enumerate(
            set(combo) for n in range(len(peers) + 1) for combo in itertools.combinations(peers, n)
        ):
            acked = set(peers) - failing
            expect = len(acked & set(OLD)) >= 2 and len(acked & set(NEW)) >= 2
            key = b"key%d" % i
            if failures == "first":
                c.peers.failing = failing
            else:
                c.peers.failing = set()
                c.peers.held = {node: [] for node in failing}
            write = asyncio.ensure_future(c.coordinator.put(key, b"v"))
            if failures == "last":
                await wait_for_async(
                    lambda acked=acked: all(c.peers.held.values()) and c.peers.durable(acked),
                    what="the acknowledging replicas answering first",
                )
                await asyncio.sleep(0)  # their answers' callbacks run
                c.peers.failing = failing
                for node in failing:
                    c.peers.release(node)
            try:
                await write
                succeeded = True
            except Unavailable:
                succeeded = False
            assert succeeded == expect, f"failing {sorted(failing)}"
            hinted += len(failing)
        # Whether the write succeeded or not, every replica that failed it gets a hint.
        await wait_for_async(lambda: c.hints.pending() == hinted, what=f"{hinted} hints")
        await c.coordinator.drain()

    run(scenario())


def test_a_transition_write_with_fewer_than_w_reachable_new_replicas_writes_nothing(
    replica_set,
):
    async def scenario():
        c = replica_set(TRANSITION_NODES)
        c.coordinator.routing = Routing(WriteSet(OLD, NEW))
        c.kill("n4", "n5")  # the old set still has W = 2 reachable (n2, n3)
        with pytest.raises(Unavailable, match="1 of 3 replicas reachable, 2 needed"):
            await c.coordinator.put(b"k", b"v")
        await c.coordinator.drain()
        assert set(c.values(b"k").values()) == {None}

    run(scenario())


# ---------------------------------------------------------------------------- reads


def test_a_read_returns_the_newest_version_and_repairs_every_stale_replica(replica_set):
    async def scenario():
        c = replica_set()
        await c.seed("n1", b"k", b"old", ts=100 << 16)
        await c.seed("n2", b"k", b"new", ts=200 << 16)
        result = await c.coordinator.get(b"k", consistency=Consistency.ALL)
        assert (result.value, result.ts) == (b"new", 200 << 16)
        await c.coordinator.drain()
        assert c.values(b"k") == {"n1": b"new", "n2": b"new", "n3": b"new"}
        assert c.coordinator.counters["read_repairs"] == 2

    run(scenario())


def test_a_read_that_finds_disagreement_also_repairs_the_replicas_it_did_not_ask(replica_set):
    async def scenario():
        c = replica_set()
        # Local first, then peers in ring order: which peer a quorum read asks is known.
        asked = next(n for n in c.view.ring.replicas(b"k", 3) if n != LOCAL)
        unasked = next(n for n in NODES if n not in (LOCAL, asked))
        await c.seed(LOCAL, b"k", b"old", ts=100 << 16)
        await c.seed(asked, b"k", b"new", ts=200 << 16)
        assert (await c.coordinator.get(b"k")).value == b"new"
        assert (unasked, rpc.READ) not in c.peers.requests
        await c.coordinator.drain()
        assert c.stored(unasked, b"k").value == b"new"
        assert c.stored(LOCAL, b"k").value == b"new"

    run(scenario())


def test_a_newer_tombstone_wins_the_read_and_is_repaired_onto_the_stale_value(replica_set):
    async def scenario():
        c = replica_set()
        for node in NODES:
            await c.seed(node, b"k", b"v", ts=100 << 16)
        await c.seed("n2", b"k", b"", ts=200 << 16, tombstone=True)
        assert (await c.coordinator.get(b"k", consistency=Consistency.ALL)).value is None
        await c.coordinator.drain()
        assert all(c.stored(n, b"k").tombstone for n in NODES)

    run(scenario())


def test_replicas_that_agree_are_not_repaired(replica_set):
    async def scenario():
        c = replica_set()
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ALL)
        await c.coordinator.get(b"k", consistency=Consistency.ALL)
        await c.coordinator.drain()
        assert c.coordinator.counters["read_repairs"] == 0

    run(scenario())


def test_a_read_skips_dead_and_failing_replicas_while_r_can_still_answer(replica_set):
    async def scenario():
        c = replica_set()
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ALL)
        first, second = (n for n in c.view.ring.replicas(b"k", 3) if n != LOCAL)
        c.kill(first)  # a dead replica is asked last, so the other peer answers
        c.peers.requests.clear()
        assert (await c.coordinator.get(b"k")).value == b"v"
        assert c.peers.requests == [(second, rpc.READ)]
        c.revive(first)
        c.peers.failing.add(first)  # believed alive, fails: the next replica is asked
        c.peers.requests.clear()
        assert (await c.coordinator.get(b"k")).value == b"v"
        assert c.peers.requests == [(first, rpc.READ), (second, rpc.READ)]
        assert c.coordinator.counters["replica_read_failures"] == 1

    run(scenario())


def test_fewer_than_r_answering_replicas_is_unavailable(replica_set):
    async def scenario():
        c = replica_set()
        await c.coordinator.put(b"k", b"v", consistency=Consistency.ALL)
        c.peers.failing.update({"n2", "n3"})
        with pytest.raises(Unavailable, match="1 of 3 replicas answered, 2 needed"):
            await c.coordinator.get(b"k")
        assert (await c.coordinator.get(b"k", consistency=Consistency.ONE)).value == b"v"
        assert c.coordinator.counters["reads_unavailable"] == 1

    run(scenario())


# Versions a replica may hold: (value, ts, tombstone, expires_at_ms); None is no version.
VERSIONS = (
    None,
    (b"a", 100 << 16, False, None),
    (b"b", 100 << 16, False, None),  # same ts as "a": the greater value wins
    (b"", 100 << 16, True, None),  # same ts: a tombstone beats any value
    (b"gone", 150 << 16, False, 1),  # newer, but expired long ago
    (b"c", 200 << 16, False, None),
)


def _lww_key(version: tuple) -> tuple:
    """docs/formats.md's last-writer-wins order, read independently of record.newer."""
    value, ts, tombstone, expires = version
    return (ts, tombstone, value, expires or 0)


def test_a_read_of_any_mix_of_versions_returns_the_newest_and_leaves_every_replica_with_it(
    replica_set,
):
    async def scenario():
        c = replica_set()
        mixes = list(itertools.product(VERSIONS, repeat=len(NODES)))
        for i, mix in enumerate(mixes):
            key = b"mix%d" % i
            for node, version in zip(NODES, mix, strict=True):
                if version is not None:
                    value, ts, tombstone, expires = version
                    await c.seed(node, key, value, ts, tombstone=tombstone, expires_at_ms=expires)
            result = await c.coordinator.get(key, consistency=Consistency.ALL)
            present = [v for v in mix if v is not None]
            if not present:
                assert result.value is None
                continue
            newest = max(present, key=_lww_key)
            value, ts, tombstone, expires = newest
            live = not tombstone and expires is None
            assert result.value == (value if live else None), mix
            await c.coordinator.drain()
            for node in NODES:
                stored = c.stored(node, key)
                assert (stored.ts, stored.value, stored.tombstone) == (ts, value, tombstone), mix

    run(scenario())


def test_read_repair_is_bounded_and_counts_what_it_dropped(replica_set):
    async def scenario():
        c = replica_set(max_repairs_in_flight=1)
        await c.seed("n2", b"k", b"new", ts=200 << 16)  # n1 and n3 are stale
        assert (await c.coordinator.get(b"k", consistency=Consistency.ALL)).value == b"new"
        assert c.coordinator.counters["read_repairs"] == 1
        assert c.coordinator.counters["read_repairs_dropped"] == 1
        await c.coordinator.drain()
        # The next read finds the one replica still stale and repairs it.
        await c.coordinator.get(b"k", consistency=Consistency.ALL)
        await c.coordinator.drain()
        assert c.values(b"k") == {"n1": b"new", "n2": b"new", "n3": b"new"}

    run(scenario())


def test_reads_during_a_transition_ask_the_replicas_its_phase_names(replica_set):
    async def scenario():
        c = replica_set(TRANSITION_NODES)
        c.coordinator.routing = Routing(WriteSet(OLD, NEW))
        await c.seed("n5", b"k", b"only-on-the-new-owner", ts=100 << 16)
        result = await c.coordinator.get(b"k", consistency=Consistency.ALL)
        assert result.value is None, "before commit, reads stay on the old owners"
        assert {node for node, kind in c.peers.requests if kind == rpc.READ} == set(OLD)
        assert result.owner_url == "http://n2:8484"

    run(scenario())


# ---------------------------------------------------------------------------- in flight


def test_a_read_or_write_is_in_flight_from_its_routing_to_its_answer(replica_set):
    """What a transition's cleanup waits for (cluster/inflight.py): a read and a write that a
    slow replica holds count as begun before a new generation until they are answered; one
    begun after it does not."""

    async def scenario():
        c = replica_set()
        inflight = c.coordinator.inflight
        c.peers.held["n3"] = []
        read = asyncio.ensure_future(c.coordinator.get(b"r", consistency=Consistency.ALL))
        write = asyncio.ensure_future(c.coordinator.put(b"w", b"v", consistency=Consistency.ALL))
        await wait_for_async(lambda: len(c.peers.held["n3"]) == 2, what="n3 holding both")
        generation = inflight.advance()
        assert inflight.older(generation) == 2
        c.peers.held["n2"] = []
        later = asyncio.ensure_future(c.coordinator.get(b"later", consistency=Consistency.ALL))
        await wait_for_async(lambda: c.peers.held["n2"], what="n2 holding the later read")
        c.peers.release("n3")
        await asyncio.gather(read, write)
        assert await inflight.drained(generation, 5.0)
        assert not later.done()
        c.peers.release("n2")
        c.peers.release("n3")
        await later
        assert inflight.older(inflight.advance()) == 0

    run(scenario())
