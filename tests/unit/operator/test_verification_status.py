"""status.lastVerification and its event, from what the nodes report (pure)."""

from limedb_operator.scaling import (
    NORMAL,
    Member,
    Observed,
    PodView,
    RingView,
    decide,
    freshest,
    ring_view_from_status,
)
from limedb_operator.status import build_status
from limedb_operator.verification import event, from_admin_status, newest, published

NOW = "2026-01-01T00:00:00Z"


def _record(epoch=5, result="ok", finished_ms=1000, repaired=0, keys=0):
    return {
        "epoch": epoch,
        "result": result,
        "rangesChecked": 40,
        "rangesRepaired": repaired,
        "keysRepaired": keys,
        "startedAt": "2026-12-03T07:00:00Z",
        "finishedAt": f"2026-12-03T07:00:{finished_ms // 1000:02d}Z",
        "finishedMs": finished_ms,
        "node": "n0",
        "trigger": "transition",
    }


def _status(record=None, epoch=5):
    raw = {
        "epoch": epoch,
        "members": [
            {"node_id": f"http://lime-{i}.lime-headless.db.svc:8484", "state": "Normal"}
            for i in range(3)
        ],
        "transition": None,
    }
    if record is not None:
        raw["verification"] = {"running": None, "last": record, "runs": {}}
    return raw


def _obs(ring):
    pods = tuple(PodView(f"lime-{i}", i, f"127.0.0.{10 + i}", True) for i in range(3))
    return Observed("lime", "db", 3, 3, 3, pods, ring)


def test_the_status_shows_the_six_published_fields_of_the_newest_record():
    view = ring_view_from_status(_status(_record(keys=0)))
    status = build_status(_obs(view), decide(_obs(view)), None, NOW, 1)
    assert status["lastVerification"] == {
        "epoch": 5,
        "rangesChecked": 40,
        "rangesRepaired": 0,
        "keysRepaired": 0,
        "result": "ok",
        "finishedAt": "2026-12-03T07:00:01Z",
    }


def test_a_node_without_the_record_does_not_hide_it_and_the_newest_of_several_wins():
    old, new = _record(epoch=4, finished_ms=1000), _record(epoch=5, finished_ms=9000)
    views = [
        ring_view_from_status(_status(None, epoch=5)),  # restarted, was down for the push
        ring_view_from_status(_status(old, epoch=5)),
        ring_view_from_status(_status(new, epoch=5)),
    ]
    assert freshest(views).verification["epoch"] == 5
    assert freshest(views[:2]).verification["epoch"] == 4
    assert newest([None, None]) is None


def test_status_keeps_the_last_record_when_no_node_reports_one():
    kept = {"epoch": 3, "result": "ok"}
    assert published(None, kept) == kept
    assert published(None, None) is None
    members = tuple(Member(f"m{i}", NORMAL) for i in range(3))
    obs = _obs(RingView(5, members))
    status = build_status(obs, decide(obs), {"lastVerification": kept}, NOW, 1)
    assert status["lastVerification"] == kept


def test_malformed_records_are_ignored():
    assert from_admin_status({}) is None
    assert from_admin_status({"verification": {"last": None}}) is None
    assert from_admin_status({"verification": {"last": {**_record(), "result": "fine"}}}) is None
    assert from_admin_status({"verification": {"last": {"result": "ok"}}}) is None


def test_one_event_per_new_record_warning_when_repaired_or_failed():
    ok = published(from_admin_status(_status(_record())), None)
    assert event(None, ok)[:2] == ("Normal", "Verified")
    assert event(ok, dict(ok)) is None  # the same record seen again: no new event
    assert event(ok, None) is None
    repaired = published(
        from_admin_status(
            _status(_record(result="repaired", finished_ms=5000, repaired=2, keys=12))
        ),
        ok,
    )
    kind, reason, message = event(ok, repaired)
    assert (kind, reason) == ("Warning", "VerificationRepaired")
    assert "12 keys repaired" in message and "epoch 5" in message
    failed = {**repaired, "result": "failed", "finishedAt": "2026-12-03T08:00:00Z"}
    assert event(repaired, failed)[:2] == ("Warning", "VerificationFailed")
