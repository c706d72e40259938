"""The history checker itself: it must catch lost writes, phantom reads and resurrected deletes."""

from __future__ import annotations

import math

from support.history import DELETE, FAIL, OK, READ, UNKNOWN, WRITE, History, Op


def _history(*ops: Op) -> History:
    history = History(slack_s=0.005)
    history.ops.extend(ops)
    return history


def test_final_state_holding_the_last_acknowledged_write_passes() -> None:
    h = _history(Op(WRITE, "k", b"v1", 0.0, 1.0, OK), Op(WRITE, "k", b"v2", 2.0, 3.0, OK))
    assert h.check_final(lambda key: b"v2") == []


def test_lost_acknowledged_write_is_reported() -> None:
    h = _history(Op(WRITE, "k", b"v1", 0.0, 1.0, OK), Op(WRITE, "k", b"v2", 2.0, 3.0, OK))
    assert "acknowledged write lost" in h.check_final(lambda key: b"v1")[0]
    assert "acknowledged write lost" in h.check_final(lambda key: None)[0]


def test_concurrent_writes_may_either_win() -> None:
    h = _history(Op(WRITE, "k", b"a", 0.0, 2.0, OK), Op(WRITE, "k", b"b", 1.0, 3.0, OK))
    assert h.check_final(lambda key: b"a") == []
    assert h.check_final(lambda key: b"b") == []


def test_unknown_outcome_write_after_the_last_ack_may_win_failed_one_may_not() -> None:
    h = _history(
        Op(WRITE, "k", b"acked", 0.0, 1.0, OK),
        Op(WRITE, "k", b"maybe", 2.0, math.inf, UNKNOWN),
        Op(WRITE, "k", b"refused", 2.0, 2.5, FAIL),
    )
    assert h.check_final(lambda key: b"maybe") == []
    assert h.check_final(lambda key: b"acked") == []
    assert h.check_final(lambda key: b"refused") != []


def test_deleted_key_coming_back_is_reported() -> None:
    h = _history(Op(WRITE, "k", b"v", 0.0, 1.0, OK), Op(DELETE, "k", None, 2.0, 3.0, OK))
    assert h.check_final(lambda key: None) == []
    assert "deleted key came back" in h.check_final(lambda key: b"v")[0]


def test_read_of_a_value_nobody_wrote_is_reported() -> None:
    h = _history(Op(WRITE, "k", b"v", 0.0, 1.0, OK), Op(READ, "k", b"ghost", 2.0, 3.0, OK))
    assert "never written" in h.check_reads()[0]


def test_quorum_read_of_a_superseded_value_is_reported_only_when_asked() -> None:
    h = _history(
        Op(WRITE, "k", b"old", 0.0, 1.0, OK),
        Op(WRITE, "k", b"new", 2.0, 3.0, OK),
        Op(READ, "k", b"old", 4.0, 5.0, OK),
        Op(READ, "k", b"old", 2.5, 5.0, OK),  # overlaps the new write: allowed
    )
    assert h.check_reads() == []
    problems = h.check_reads(quorum=True)
    assert len(problems) == 1 and "superseded" in problems[0]


def test_recording_from_the_clock_orders_operations() -> None:
    h = History()
    write = h.begin(WRITE, "k", b"v")
    h.finish(write, OK)
    read = h.begin(READ, "k")
    h.finish(read, OK, b"v")
    assert write.end <= read.start and h.summary() == {"write_ok": 1, "read_ok": 1}
    assert h.check_reads(quorum=True) == [] and h.check_final(lambda key: b"v") == []


def test_read_overlapping_a_write_that_began_after_it_may_return_that_write() -> None:
    h = _history(
        Op(WRITE, "k", b"old", 0.0, 1.0, OK),
        Op(READ, "k", b"new", 2.0, 4.0, OK),
        Op(WRITE, "k", b"new", 2.5, 3.0, OK),
    )
    assert h.check_reads(quorum=True) == []
