"""Transitions refuse unsafe changes, route writes and reads by phase, step only forward (or
back before commit), and survive a round trip through their JSON record."""

import json

import orjson
import pytest
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.ring.placement import Ring
from limedb.cluster.transitions import (
    Change,
    Kind,
    Phase,
    StreamProgress,
    Transition,
    TransitionError,
    TransitionRefused,
    plan_moves,
    propose,
    quorum_met,
)

NODES = {f"n{i}": f"http://10.0.0.{i}:8484" for i in range(1, 6)}


def ring_of(count: int, vnodes: int = 16, epoch: int = 7) -> Ring:
    return Ring({f"n{i}": NODES[f"n{i}"] for i in range(1, count + 1)}, vnodes, epoch)


def quorum(n: int) -> int:
    return n // 2 + 1


def streamed(t: Transition, now_ms: int = 2_000) -> Transition:
    """Mark every stream complete (what the streamer reports when it has sent everything)."""
    t = t.begin_streaming(now_ms)
    for target, indexes in t.streams().items():
        t = t.record_progress(target, index=len(indexes), cursor=None, keys=1, nbytes=10,
                              now_ms=now_ms)  # fmt: skip
    return t


# ----------------------------------------------------------------------------- refusals


def test_leave_that_would_drop_below_rf_is_refused_with_advice():
    with pytest.raises(TransitionRefused) as err:
        propose(ring_of(3), 3, Change.leave("n2"), now_ms=0)
    message = str(err.value)
    assert "leaving n2 would leave 2 nodes, fewer than the replication factor 3" in message
    assert "lower the replication factor first" in message


def test_leave_of_the_last_node_is_refused():
    with pytest.raises(TransitionRefused, match="last member"):
        propose(ring_of(1), 1, Change.leave("n1"), now_ms=0)


def test_any_change_while_a_transition_runs_is_refused_naming_it():
    running = propose(ring_of(3), 3, Change.join("n4", NODES["n4"]), now_ms=0, transition_id="t-1")
    for change in (Change.join("n5", NODES["n5"]), Change.leave("n1"), Change.set_rf(2)):
        with pytest.raises(TransitionRefused, match="transition t-1 .* still running") as err:
            propose(ring_of(3), 3, change, now_ms=1, running=running)
        assert err.value.running_id == "t-1"


def test_a_finished_or_rolled_back_transition_does_not_block_the_next():
    first = propose(ring_of(3), 3, Change.join("n4", NODES["n4"]), now_ms=0)
    rolled_back = first.roll_back("joining node died", now_ms=5)
    again = propose(ring_of(3), 3, Change.join("n4", NODES["n4"]), now_ms=6, running=rolled_back)
    assert again.phase is Phase.PROPOSED
    done = streamed(again).commit(7).begin_cleanup(8).finish(9)
    nxt = propose(done.new_ring, 3, Change.join("n5", NODES["n5"]), now_ms=10, running=done)
    assert nxt.new_ring.epoch == done.new_ring.epoch + 1


@pytest.mark.parametrize(
    "change, match",
    [
        (Change.join("n2", "http://elsewhere:1"), "already a member"),
        (Change.join("n9", NODES["n2"]), "already belongs to member n2"),
        (Change.join("", "http://x:1"), "needs the new node's id and URL"),
        (Change.leave("n9"), "not a member of the ring"),
        (Change.replace("n9", "n8", "http://x:1"), "not a member to replace"),
        (Change.replace("n1", "n2", "http://x:1"), "n2 is already a member"),
        (Change.set_rf(4), "needs at least 4 members; the ring has 3"),
        (Change.set_rf(0), "at least 1"),
        (Change.set_rf(2), "already 2"),
    ],
)
def test_invalid_changes_are_refused_with_the_reason(change, match):
    with pytest.raises(TransitionRefused, match=match):
        propose(ring_of(3), 2, change, now_ms=0)


def test_replace_refuses_a_node_the_failure_detector_holds_alive():
    with pytest.raises(TransitionRefused, match="n1 is alive"):
        propose(ring_of(3), 3, Change.replace("n1", "n4", NODES["n4"]), now_ms=0,
                live={"n1", "n2", "n3"})  # fmt: skip


def test_replace_at_rf1_would_lose_data_and_needs_explicit_consent():
    change = Change.replace("n1", "n4", NODES["n4"])
    with pytest.raises(TransitionRefused, match="loses data"):
        propose(ring_of(3), 1, change, now_ms=0)
    t = propose(ring_of(3), 1, change, now_ms=0, accept_loss=True)
    assert all(not m.sources for m in t.moves if "n1" in m.old_replicas)


# ----------------------------------------------------------------------------- plans


def test_join_streams_only_to_the_new_node_from_current_replicas():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0)
    assert t.new_ring.epoch == 8 and t.old_ring.epoch == 7
    assert set(t.streams()) == {"n4"}
    for move in t.moves:
        assert move.targets == ("n4",)
        assert set(move.sources) == set(move.old_replicas)
        assert move.start <= move.end


def test_leave_prefers_the_leaving_node_as_source_and_it_loses_every_range():
    t = propose(ring_of(4), 2, Change.leave("n2"), now_ms=0)
    assert "n2" not in t.streams()
    for move in t.moves:
        if "n2" in move.old_replicas:
            assert move.sources[0] == "n2"
    done = streamed(t).commit(1).begin_cleanup(2)
    lost_by_n2 = done.cleanup_ranges()["n2"]
    assert {(m.start, m.end) for m in lost_by_n2} == {
        (m.start, m.end) for m in t.moves if "n2" in m.old_replicas
    }


def test_replace_by_the_same_id_streams_all_of_its_ranges_from_the_survivors():
    ring = ring_of(3)
    t = propose(ring, 2, Change.replace("n2", "n2", "http://10.0.0.99:8484"), now_ms=0)
    assert set(t.streams()) == {"n2"}
    covered = sum(m.size for m in t.moves)
    owned = sum(r.size for r in ring.replica_ranges("n2", 2))
    assert covered == owned
    assert all("n2" not in m.sources and m.sources for m in t.moves)


def test_lowering_rf_streams_nothing_and_cleans_up_the_extra_copies():
    t = propose(ring_of(3), 3, Change.set_rf(1), now_ms=0)
    assert t.streams() == {}
    done = streamed(t).commit(1).begin_cleanup(2)
    for move in t.moves:
        assert len(move.new_replicas) == 1 and set(move.removed) == (
            set(move.old_replicas) - set(move.new_replicas)
        )
    assert set(done.cleanup_ranges()) == {"n1", "n2", "n3"}


def test_a_range_that_would_wrap_is_split_at_zero():
    ring = Ring({"b": "http://b"}, vnodes=0)
    # "a" has the smaller token, so it takes over (b, 2**64-1] and [0, a]: a wrapping range.
    joined = ring.with_member("a", "http://a")
    assert joined.tokens[0] == Ring({"a": "x"}, vnodes=0).tokens[0]
    moves = plan_moves(ring, 1, joined, 1)
    assert [(m.start, m.end) for m in moves] == [
        (0, joined.tokens[0]),
        (joined.tokens[1] + 1, MAX_TOKEN),
    ]
    assert all(m.targets == ("a",) and m.sources == ("b",) for m in moves)


# ----------------------------------------------------------------------------- write sets


def test_a_transition_write_needs_w_of_the_old_and_w_of_the_new_replicas():
    old, new = ("a", "b", "c"), ("a", "b", "d")
    assert quorum_met({"a", "b"}, old, new, 2, 2)  # shared nodes count for both
    assert not quorum_met({"c", "d"}, old, new, 2, 2)  # one of each side only
    assert quorum_met({"a", "c", "d"}, old, new, 2, 2)
    assert not quorum_met({"a", "c"}, old, new, 2, 2)  # the new owners have only one copy
    assert quorum_met({"a"}, ("a",), ("a", "b"), 2, 1)  # W capped at the set size


def test_writes_go_to_old_and_new_owners_until_cleanup_and_reads_move_at_commit():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0)
    key = next(m.start for m in t.moves)
    old, new = t.old_ring.replicas(key, 2), t.new_ring.replicas(key, 2)
    assert set(old) != set(new)
    for phase_t in (t, t.begin_streaming(1), streamed(t).commit(2)):
        ws = phase_t.write_set(key)
        assert (ws.old, ws.new) == (old, new)
        assert set(ws.all) == set(old) | set(new) and ws.all[: len(old)] == old
    assert t.read_replicas(key) == old
    assert t.begin_streaming(1).read_replicas(key) == old
    committed = streamed(t).commit(2)
    assert committed.read_replicas(key) == new
    assert committed.begin_cleanup(3).write_set(key).all == new
    rolled_back = t.begin_streaming(1).roll_back("test", 2)
    assert rolled_back.write_set(key).all == old and rolled_back.read_replicas(key) == old
    ws = t.write_set(key)
    acked_old_only = set(old)
    assert not ws.acknowledged(acked_old_only, quorum) or set(new) <= set(old)
    assert ws.acknowledged(set(old) | set(new), quorum)


def test_reads_skip_a_replacement_that_is_still_being_filled():
    t = propose(ring_of(3), 3, Change.replace("n2", "n2", "http://10.0.0.99:8484"), now_ms=0)
    key = t.moves[0].start
    assert "n2" not in t.begin_streaming(1).read_replicas(key)
    assert "n2" in streamed(t).commit(2).read_replicas(key)


# ----------------------------------------------------------------------------- phases


def test_commit_waits_for_every_stream():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0).begin_streaming(1)
    with pytest.raises(TransitionError, match="still streaming to n4"):
        t.commit(2)


def test_phases_only_step_forward_and_rollback_is_refused_after_commit():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0)
    with pytest.raises(TransitionError, match="cannot commit in phase proposed"):
        t.commit(1)
    with pytest.raises(TransitionError, match="cannot finish"):
        t.finish(1)
    committed = streamed(t).commit(3)
    with pytest.raises(TransitionError, match="can only go forward"):
        committed.roll_back("too late", 4)
    with pytest.raises(TransitionError):
        committed.begin_streaming(4)
    done = committed.begin_cleanup(5).finish(6)
    assert done.phase is Phase.DONE and not done.active
    assert done.committed_ring() == (done.new_ring, 2)
    assert t.committed_ring() == (t.old_ring, 2)


def test_every_step_bumps_the_version_so_the_newest_copy_wins():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0)
    s = t.begin_streaming(1)
    assert s.version == t.version + 1 and s.newer_than(t) and not t.newer_than(s)
    other = propose(s.new_ring, 2, Change.join("n5", NODES["n5"]), now_ms=9)
    assert other.newer_than(s)  # a later epoch's transition supersedes


def test_progress_resumes_from_the_recorded_cursor_and_never_goes_backwards():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0).begin_streaming(1)
    first = t.moves[t.streams()["n4"][0]]
    assert t.next_range("n4") == (first, first.start)
    middle = first.start + first.size // 2
    t2 = t.record_progress("n4", index=0, cursor=middle, keys=5, nbytes=500, now_ms=2)
    assert t2.next_range("n4") == (first, middle)
    assert t2.range_state(t.streams()["n4"][0]) == {"n4": "streaming"}
    with pytest.raises(TransitionError, match="backwards"):
        t2.record_progress("n4", index=0, cursor=first.start, keys=5, nbytes=500, now_ms=3)
    with pytest.raises(TransitionError, match="not inside range"):
        t2.record_progress("n4", index=0, cursor=first.end + 1, keys=5, nbytes=500, now_ms=3)
    with pytest.raises(TransitionError, match="receives no ranges"):
        t2.record_progress("n1", index=0, cursor=None, keys=0, nbytes=0, now_ms=3)
    t3 = t2.record_progress("n4", index=1, cursor=None, keys=9, nbytes=900, now_ms=4)
    assert t3.range_state(t.streams()["n4"][0]) == {"n4": "done"}


def test_summary_reports_ranges_keys_bytes_rate_and_eta():
    t = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0).begin_streaming(0)
    total = len(t.streams()["n4"])
    half_tokens = sum(t.moves[i].size for i in t.streams()["n4"]) / 2
    index = 0
    done_tokens = 0
    while done_tokens + t.moves[t.streams()["n4"][index]].size <= half_tokens:
        done_tokens += t.moves[t.streams()["n4"][index]].size
        index += 1
    t = t.record_progress("n4", index=index, cursor=None, keys=1000, nbytes=100_000, now_ms=10_000)
    s = t.summary(now_ms=10_000)
    assert (s.ranges_total, s.ranges_done, s.keys, s.bytes) == (total, index, 1000, 100_000)
    assert s.keys_per_s == pytest.approx(100) and s.bytes_per_s == pytest.approx(10_000)
    assert 0 < s.fraction <= 0.5
    assert s.eta_s == pytest.approx(10 * (1 - s.fraction) / s.fraction)
    status = t.status(now_ms=10_000)
    assert status["phase"] == "streaming" and status["progress"]["ranges_done"] == index


# ----------------------------------------------------------------------------- records


def test_record_round_trips_through_json_with_progress_and_64_bit_tokens():
    t = propose(ring_of(4), 3, Change.leave("n3"), now_ms=123, transition_id="leave-x")
    t = t.begin_streaming(200)
    target = next(iter(t.streams()))
    move = t.moves[t.streams()[target][0]]
    t = t.record_progress(target, index=0, cursor=move.end, keys=3, nbytes=30, now_ms=300)
    for encoded in (t.to_json(), json.dumps(t.to_record()).encode()):
        back = Transition.from_json(encoded)
        assert back.to_record() == t.to_record()
        assert back.moves == t.moves
        assert back.progress_of(target) == StreamProgress(0, move.end, 3, 30)
        assert back.kind is Kind.LEAVE and back.phase is Phase.STREAMING


def test_a_record_whose_plan_differs_from_ours_is_rejected():
    record = propose(ring_of(3), 2, Change.join("n4", NODES["n4"]), now_ms=0).to_record()
    record["plan"]["digest"] = "0" * 16
    with pytest.raises(TransitionError, match="plan in the record does not match"):
        Transition.from_record(record)


@pytest.mark.parametrize("data", [b"[]", b"{", b'{"id": "x"}', orjson.dumps({"id": 1, "phase": 2})])
def test_malformed_records_raise_a_clear_error(data):
    with pytest.raises(TransitionError, match="bad transition record"):
        Transition.from_json(data)
