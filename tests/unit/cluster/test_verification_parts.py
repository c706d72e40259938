"""The verifier's pure parts: which ranges and replicas a verification covers, its outcome, the
record (camelCase, as published) and its file, and the VERIFY_ROOTS wire format (the
process-level test is tests/cluster/test_verification.py)."""

from __future__ import annotations

import pytest
from limedb.cluster import rpc
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.ring.placement import Ring
from limedb.cluster.transitions import Change, propose
from limedb.cluster.verification import (
    NothingToVerify,
    Verification,
    VerificationStore,
    outcome,
    pieces_for_epoch,
    ring_pieces,
    transition_pieces,
)
from limedb.cluster.verifier import (
    ROOT,
    decode_roots,
    decode_roots_request,
    encode_roots_request,
)

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
    assert outcome(0, 0, 0, "Superseded: the ring moved") == "failed"


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
    assert decode_roots(reply, 2) == [b"a" * 16, b"b" * 16]
    with pytest.raises(ValueError):
        decode_roots(reply, 3)
