"""Anti-entropy repair's pieces: the tree wire format, tree depth, range splitting and the
repair of two in-process replicas over real RPC (the process-level test is
tests/cluster/test_repair.py)."""

from __future__ import annotations

import asyncio

import pytest
from limedb.cluster import rpc
from limedb.cluster.keys import MAX_TOKEN, storage_key, token_of
from limedb.cluster.merkle import MerkleTree
from limedb.cluster.repair import (
    AntiEntropy,
    RepairRefused,
    _union,
    clip,
    decode_tree,
    depth_for,
    encode_tree,
    split_wrapping,
)
from limedb.cluster.streaming import RangeStreams
from limedb.hlc import HLC, pack
from limedb.storage import Engine, EngineOptions, WriteBatch


def test_tree_reply_round_trips_leaves_and_counts(tmp_path):
    with Engine.open(tmp_path / "db", EngineOptions(durability="none")) as engine:
        for i in range(300):
            engine.put(storage_key(b"k%d" % i), b"v")
        tree = MerkleTree.from_storage(engine, 0, MAX_TOKEN, 5)
    back = decode_tree(encode_tree(tree), 0, MAX_TOKEN, 5)
    assert back.leaves == tree.leaves and back.counts == tree.counts and back.root == tree.root
    with pytest.raises(ValueError):
        decode_tree(encode_tree(tree)[:-1], 0, MAX_TOKEN, 5)


def test_depth_grows_with_keys_and_is_bounded():
    assert depth_for(0) == 0 and depth_for(15) == 0
    assert depth_for(16) == 1 and depth_for(16 * 1024) == 11
    assert depth_for(10**12) == 12


def test_wrapping_ranges_split_and_clip_to_the_requested_tokens():
    assert split_wrapping(5, 10) == [(5, 10)]
    assert split_wrapping(MAX_TOKEN - 1, 3) == [(MAX_TOKEN - 1, MAX_TOKEN), (0, 3)]
    assert clip((5, 10), (8, 20)) == (8, 10)
    assert clip((5, 10), (11, 20)) is None
    assert clip((5, 10), None) == (5, 10)
    assert _union([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


class Replica:
    """One in-process replica: an engine, its stream endpoints and repair, on a real RPC port."""

    def __init__(self, name: str, path, peers: dict[str, Replica]) -> None:
        self.name = name
        self.engine = Engine.open(path, EngineOptions(durability="none"))
        self.streams = RangeStreams(self.engine, HLC(), _NoHandoff())
        self.server = rpc.RpcServer()
        self.client = rpc.RpcClient()
        self.peers = peers
        self.port = 0
        self.anti_entropy = AntiEntropy(
            name, self.engine, self.streams, self.call, self.ranges, interval_s=0, bytes_per_s=0
        )

    def ranges(self):  # noqa: ANN201
        # Two ranges, the second wrapping, both replicated by every replica.
        everyone = tuple(sorted(self.peers))
        return [(1 << 62, MAX_TOKEN - 100, everyone), (MAX_TOKEN - 99, (1 << 62) - 1, everyone)]

    async def call(self, node: str, kind: int, body: bytes, timeout_s: float) -> bytes:
        return await self.client.call("127.0.0.1", self.peers[node].port, kind, body, 5)

    async def start(self) -> None:
        self.streams.register(self.server)
        self.anti_entropy.register(self.server)
        await self.server.start("127.0.0.1", 0)
        self.port = self.server.port

    async def close(self) -> None:
        self.client.close()
        await self.server.stop()
        self.engine.close()


class _NoHandoff:
    def add_all(self, ranges) -> None: ...  # noqa: ANN001

    def release_all(self, ranges) -> None: ...  # noqa: ANN001


def _root(replica: Replica) -> bytes:
    return MerkleTree.from_storage(replica.engine, 0, MAX_TOKEN, 0).root


def _write(engine: Engine, key: bytes, value: bytes | None, ts: int) -> None:
    batch = WriteBatch()
    skey = storage_key(key)
    batch.delete(skey, ts) if value is None else batch.put(skey, value, ts, None)
    engine.write(batch)


def test_one_repair_makes_three_replicas_equal_and_a_second_finds_nothing(tmp_path):
    async def main() -> None:
        peers: dict[str, Replica] = {}
        for name in ("a", "b", "c"):
            peers[name] = Replica(name, tmp_path / name, peers)
        for replica in peers.values():
            await replica.start()
        try:
            ts = pack(1_700_000_000_000)
            for i in range(400):  # everyone has these
                for replica in peers.values():
                    _write(replica.engine, b"k%d" % i, b"base", ts)
            for i in range(0, 400, 3):  # only b saw these overwrites
                _write(peers["b"].engine, b"k%d" % i, b"from-b", ts + 1)
            for i in range(1, 400, 7):  # only c saw these deletes
                _write(peers["c"].engine, b"k%d" % i, None, ts + 2)
            assert len({_root(r) for r in peers.values()}) == 3

            summary = await peers["a"].anti_entropy.repair()
            assert summary["error"] is None and summary["ranges_total"] == 3
            roots = {_root(r) for r in peers.values()}
            assert len(roots) == 1
            expected = {
                f"k{i}": None if i % 7 == 1 else b"from-b" if i % 3 == 0 else b"base"
                for i in range(400)
            }
            engine = peers["c"].engine
            for key, value in expected.items():
                assert engine.get(storage_key(key.encode())) == value, key

            again = await peers["c"].anti_entropy.repair()
            assert (again["ranges_differing"], again["keys_repaired"]) == (0, 0)
            status = peers["a"].anti_entropy.status()
            assert status["runs"] == 1 and status["last"]["keys_repaired"] > 0
        finally:
            for replica in peers.values():
                await replica.close()

    asyncio.run(main())


def test_a_repair_asked_while_one_runs_is_refused(tmp_path):
    async def main() -> None:
        peers: dict[str, Replica] = {}
        peers["a"] = Replica("a", tmp_path / "a", peers)
        anti_entropy = peers["a"].anti_entropy
        try:
            async with anti_entropy._lock:
                with pytest.raises(RepairRefused):
                    await anti_entropy.repair()
            anti_entropy.replica_ranges = lambda: None  # a transition runs
            with pytest.raises(RepairRefused):
                await anti_entropy.repair()
        finally:
            await peers["a"].close()

    asyncio.run(main())


def test_tokens_of_the_test_keys_fall_in_both_ranges():
    tokens = [token_of(b"k%d" % i) for i in range(400)]
    assert any(t < 1 << 62 for t in tokens) and any(t >= 1 << 62 for t in tokens)


def test_an_unreachable_replica_is_named_and_the_others_are_still_repaired(tmp_path):
    async def main() -> None:
        peers: dict[str, Replica] = {}
        for name in ("a", "b", "c"):
            peers[name] = Replica(name, tmp_path / name, peers)
        for replica in peers.values():
            await replica.start()
        try:
            ts = pack(1_700_000_000_000)
            for i in range(50):
                _write(peers["b"].engine, b"k%d" % i, b"only-b", ts)
            await peers["c"].server.stop()
            summary = await peers["a"].anti_entropy.repair()
            assert summary["error"] is None
            assert summary["peers_unreachable"] == ["c"]
            assert summary["keys_pulled"] == 50
            assert _root(peers["a"]) == _root(peers["b"]) != _root(peers["c"])
        finally:
            for replica in peers.values():
                await replica.close()

    asyncio.run(main())


def test_what_the_repairer_pulls_reaches_a_replica_that_agreed_with_it(tmp_path):
    """a and c agree, b alone holds some writes: a's repair pulls them from b and pushes them
    on to c as well, so every replica ends equal (c's root equalled a's before the pull)."""

    async def main() -> None:
        peers: dict[str, Replica] = {}
        for name in ("a", "b", "c"):
            peers[name] = Replica(name, tmp_path / name, peers)
        for replica in peers.values():
            await replica.start()
        try:
            ts = pack(1_700_000_000_000)
            for i in range(40):
                _write(peers["b"].engine, b"k%d" % i, b"only-b", ts)
            assert _root(peers["a"]) == _root(peers["c"]) != _root(peers["b"])
            summary = await peers["a"].anti_entropy.repair()
            assert summary["error"] is None
            assert (summary["keys_pulled"], summary["keys_pushed"]) == (40, 40)
            assert len({_root(r) for r in peers.values()}) == 1
        finally:
            for replica in peers.values():
                await replica.close()

    asyncio.run(main())
