"""The verifier's parts: which ranges and replicas a verification covers, its outcome, the
record (camelCase, as published) and its file, the VERIFY_ROOTS wire format, and runs over
three in-process replicas on real RPC (the process-level test is
tests/cluster/test_verification.py)."""

from __future__ import annotations

import asyncio

import pytest
from limedb.cluster import rpc
from limedb.cluster.keys import MAX_TOKEN, storage_key
from limedb.cluster.merkle import MerkleTree
from limedb.cluster.repair import AntiEntropy
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.streaming import RangeStreams
from limedb.cluster.transitions import Change, propose
from limedb.cluster.verification import (
    NothingToVerify,
    Piece,
    Verification,
    VerificationStore,
    outcome,
    pieces_for_epoch,
    ring_pieces,
    transition_pieces,
)
from limedb.cluster.verifier import (
    ROOT,
    Superseded,
    Verifier,
    decode_roots,
    decode_roots_request,
    encode_roots_request,
    leaf_pieces,
)
from limedb.hlc import HLC, pack
from limedb.storage import Engine, EngineOptions, WriteBatch

THREE = {f"n{i}": f"http://10.0.0.{i}:8484" for i in range(3)}


def _done(t):  # noqa: ANN001, ANN202 - a Transition stepped to its end
    t = t.begin_streaming(2)
    for target in t.pending_streams():
        done = len(t.streams()[target])
        t = t.record_progress(target, index=done, cursor=None, keys=0, nbytes=0, now_ms=3)
    return t.commit(4).begin_cleanup(5).finish(6)


def _covers_once(pieces) -> bool:  # noqa: ANN001
    expected = 0
    for piece in pieces:
        if piece.start != expected or piece.end < piece.start:
            return False
        expected = piece.end + 1
    return expected == MAX_TOKEN + 1


def test_every_range_of_the_ring_is_covered_once_with_its_replicas():
    ring = Ring(THREE, 8, 1)
    pieces = ring_pieces(ring, 2)
    assert _covers_once(pieces)
    for piece in pieces:
        assert piece.replicas == ring.replicas(piece.end, 2)
    # Adjacent ranges with the same replicas are one piece.
    assert all(a.replicas != b.replicas for a, b in zip(pieces, pieces[1:], strict=False))


def test_a_finished_join_verifies_exactly_the_moved_ranges_on_their_new_replicas():
    ring = Ring(THREE, 8, 1)
    t = propose(ring, 3, Change.join("n3", "http://10.0.0.3:8484"), now_ms=1, running=None)
    with pytest.raises(NothingToVerify):
        transition_pieces(t)  # not done yet
    done = _done(t)
    pieces = transition_pieces(done)
    assert pieces and sum(p.end - p.start + 1 for p in pieces) == sum(m.size for m in t.moves)
    for piece in pieces:
        assert "n3" in piece.replicas
        assert piece.replicas == done.new_ring.replicas(piece.end, 3)

    epoch, same, which = pieces_for_epoch(done.new_ring, 3, done, 2)
    assert (epoch, same, which) == (2, pieces, done)
    epoch, everything, which = pieces_for_epoch(done.new_ring, 3, done, None)
    assert epoch == 2 and which is None and _covers_once(everything)
    with pytest.raises(NothingToVerify, match="epoch 1"):
        pieces_for_epoch(done.new_ring, 3, done, 1)
    with pytest.raises(NothingToVerify, match="no finished transition"):
        pieces_for_epoch(ring, 3, None, 1)


def test_outcome_is_failed_when_anything_went_unchecked_else_repaired_or_ok():
    assert outcome(0, 0, 0, None) == "ok"
    assert outcome(0, 0, 2, None) == "repaired"
    assert outcome(1, 0, 2, None) == "failed"
    assert outcome(0, 1, 0, None) == "failed"
    assert outcome(0, 0, 0, "OSError: no space left") == "failed"


def _record(**overrides) -> Verification:
    values = dict(
        epoch=5,
        result="repaired",
        ranges_checked=10,
        ranges_repaired=2,
        keys_repaired=12,
        started_at="2026-12-03T07:00:00Z",
        finished_at="2026-12-03T07:00:01Z",
        finished_ms=1_796_281_201_000,
        node="n0",
        trigger="transition",
        replicas_unreachable=("n2",),
    )
    return Verification(**{**values, **overrides})


def test_the_record_is_published_in_camel_case_and_reads_back(tmp_path):
    v = _record()
    record = v.to_record()
    for name in ("epoch", "rangesChecked", "rangesRepaired", "keysRepaired", "result"):
        assert name in record
    assert record["finishedAt"] == "2026-12-03T07:00:01Z"
    assert record["replicasUnreachable"] == ["n2"]
    assert Verification.from_record(record) == v
    assert (v.exit_code, _record(result="ok").exit_code, _record(result="failed").exit_code) == (
        1,
        0,
        2,
    )
    with pytest.raises(ValueError):
        Verification.from_record({**record, "result": "maybe"})
    with pytest.raises(ValueError):
        Verification.from_record({"epoch": 1})

    store = VerificationStore(tmp_path)
    assert store.load() is None
    store.save(v)
    assert VerificationStore(tmp_path).load() == v
    (tmp_path / "verification.json").write_bytes(b"{not json")
    with pytest.raises(ValueError, match="verification.json"):
        store.load()


def test_newest_is_the_one_finished_last():
    older, newer = _record(finished_ms=1), _record(finished_ms=2, epoch=4)
    assert newer.newer_than(older) and not older.newer_than(newer) and older.newer_than(None)


def test_roots_request_and_reply_round_trip():
    ranges = [(0, 10), (11, MAX_TOKEN)]
    assert decode_roots_request(encode_roots_request(7, ranges)) == (7, ranges)
    with pytest.raises(rpc.RpcError):
        decode_roots_request(encode_roots_request(7, ranges)[:-1])
    with pytest.raises(rpc.RpcError):
        decode_roots_request(encode_roots_request(7, [(10, 0)]))
    reply = ROOT.pack(b"a" * 16, 3) + ROOT.pack(b"b" * 16, 0)
    assert decode_roots(reply, 2) == [(b"a" * 16, 3), (b"b" * 16, 0)]
    with pytest.raises(ValueError):
        decode_roots(reply, 3)


class Replica:
    """One in-process replica over real RPC: engine, streams, repair and its verifier."""

    def __init__(self, name: str, path, peers: dict[str, Replica]) -> None:  # noqa: ANN001
        self.name, self.peers, self.port = name, peers, 0
        self.engine = Engine.open(path, EngineOptions(durability="none"))
        self.streams = RangeStreams(self.engine, HLC(), _NoHandoff())
        self.server, self.client = rpc.RpcServer(), rpc.RpcClient()
        self.anti_entropy = AntiEntropy(
            name, self.engine, self.streams, self.call, lambda: [], interval_s=0, bytes_per_s=0
        )
        ring = Ring({n: f"http://{n}:1" for n in ("a", "b", "c")}, 1, 1)
        self.verifier = Verifier(
            name,
            self.engine,
            lambda: RingRecord(ring, 3),
            self.anti_entropy,
            self.call,
            path,
            members=lambda: sorted(peers),
            settle_s=0.01,
        )

    async def call(self, node: str, kind: int, body: bytes, timeout_s: float) -> bytes:
        return await self.client.call("127.0.0.1", self.peers[node].port, kind, body, 5)

    async def start(self) -> None:
        self.streams.register(self.server)
        self.anti_entropy.register(self.server)
        self.verifier.register(self.server, lambda handler: handler)
        await self.server.start("127.0.0.1", 0)
        self.port = self.server.port

    async def close(self) -> None:
        self.client.close()
        await self.server.stop()
        self.engine.close()


class _NoHandoff:
    def add_all(self, ranges) -> None: ...  # noqa: ANN001

    def release_all(self, ranges) -> None: ...  # noqa: ANN001


def _put(engine: Engine, key: bytes, ts: int) -> None:
    batch = WriteBatch()
    batch.put(storage_key(key), b"v", ts, None)
    engine.write(batch)


def _with_replicas(tmp_path, scenario) -> None:  # noqa: ANN001
    async def main() -> None:
        peers: dict[str, Replica] = {}
        for name in ("a", "b", "c"):
            peers[name] = Replica(name, tmp_path / name, peers)
        for replica in peers.values():
            await replica.start()
        try:
            await scenario(peers)
        finally:
            for replica in peers.values():
                await replica.close()

    asyncio.run(main())


EVERYTHING = [Piece(0, MAX_TOKEN, ("a", "b", "c"))]


def test_a_replica_missing_keys_is_repaired_and_reported_with_their_number(tmp_path):
    async def scenario(peers: dict[str, Replica]) -> None:
        ts = pack(1_700_000_000_000)
        for i in range(200):
            for name in ("a", "b", "c") if i >= 30 else ("a", "c"):
                _put(peers[name].engine, b"k%d" % i, ts)
        v = await peers["b"].verifier.run(1, EVERYTHING, None, "on-demand")
        assert (v.result, v.keys_repaired, v.ranges_repaired, v.ranges_differing) == (
            "repaired",
            30,
            1,
            1,
        )
        for name in ("a", "c"):  # pushed to every member
            assert peers[name].verifier.last == v
        again = await peers["c"].verifier.run(1, EVERYTHING, None, "on-demand")
        assert (again.result, again.keys_repaired, again.exit_code) == ("ok", 0, 0)

    _with_replicas(tmp_path, scenario)


def test_a_difference_that_settles_is_no_damage(tmp_path):
    """A write that reached one replica first (in flight) differs once, not twice: ok."""

    async def scenario(peers: dict[str, Replica]) -> None:
        ts = pack(1_700_000_000_000)
        for i in range(100):
            for replica in peers.values():
                _put(replica.engine, b"k%d" % i, ts)
        _put(peers["a"].engine, b"late", ts + 1)
        verifier = peers["a"].verifier
        compare = verifier._leaves
        calls = 0

        async def late_write_lands(tally, pieces):  # noqa: ANN001, ANN202
            nonlocal calls
            calls += 1
            found = await compare(tally, pieces)
            if calls == 1:
                for name in ("b", "c"):
                    _put(peers[name].engine, b"late", ts + 1)
            return found

        verifier._leaves = late_write_lands
        v = await verifier.run(1, EVERYTHING, None, "transition")
        assert (v.result, v.ranges_differing, v.keys_repaired, calls) == ("ok", 1, 0, 2)

    _with_replicas(tmp_path, scenario)


def test_a_replica_that_does_not_answer_fails_the_verification_by_name(tmp_path):
    async def scenario(peers: dict[str, Replica]) -> None:
        await peers["c"].server.stop()
        v = await peers["a"].verifier.run(1, EVERYTHING, None, "on-demand")
        assert (v.result, v.replicas_unreachable, v.ranges_checked, v.exit_code) == (
            "failed",
            ("c",),
            0,
            2,
        )

    _with_replicas(tmp_path, scenario)


def test_damaged_leaves_become_pieces_with_adjacent_leaves_merged():
    tree = MerkleTree.build([], 0, 799, 3)  # 8 leaves of 100 tokens
    pieces = leaf_pieces(tree, [1, 2, 5], ("a", "b"))
    assert pieces == [Piece(100, 299, ("a", "b")), Piece(500, 599, ("a", "b"))]


def test_a_run_for_an_epoch_the_ring_has_left_records_nothing(tmp_path):
    async def scenario(peers: dict[str, Replica]) -> None:
        verifier = peers["a"].verifier  # its ring is at epoch 1
        with pytest.raises(Superseded):
            await verifier.run(2, EVERYTHING, None, "transition")
        assert verifier.last is None and verifier.runs == {"ok": 0, "repaired": 0, "failed": 0}
        assert peers["b"].verifier.last is None

    _with_replicas(tmp_path, scenario)
