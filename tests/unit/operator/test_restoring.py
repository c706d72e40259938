"""spec.restoreFrom: the restore starts once every node is a Ready member, follows its job,
is asked again (and resumes) when its coordinator lost it, and fails only for good reasons."""

from datetime import UTC, datetime

from limedb_operator import restoring
from limedb_operator.backups import COMPLETED, FAILED, PENDING, RUNNING

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
S3 = {"bucket": "b", "prefix": "p", "endpoint": "http://s3:8333"}


def named(phase, backup_id="B1"):
    return {
        "spec": {"cluster": "lime", "s3": S3},
        "status": {"phase": phase, "backupId": backup_id},
    }


def test_the_source_is_a_completed_limebackup_or_a_location():
    assert "does not exist" in restoring.source_of({"backup": "x"}, None)
    assert "Running, not Completed" in restoring.source_of({"backup": "x"}, named(RUNNING))
    source = restoring.source_of({"backup": "x"}, named(COMPLETED))
    assert (source.target.url, source.backup_id) == ("s3://b/p", "B1")
    newest = restoring.source_of({"s3": S3}, None)
    assert newest.backup_id is None and newest.target.endpoint == "http://s3:8333"


def test_nothing_starts_before_every_node_is_a_ready_member():
    source = restoring.source_of({"s3": S3}, None)
    waiting = restoring.step(None, False, source, None, NOW)
    assert waiting.action == "none" and waiting.status["phase"] == PENDING
    assert restoring.step(None, True, source, None, NOW).action == "start"
    # A source that is not ready yet holds it too.
    assert restoring.step(None, True, "LimeBackup x is Running", None, NOW).action == "none"


def test_a_started_restore_is_followed_to_completion():
    status, event = restoring.started({}, {"id": "restore-B1", "backup_id": "B1"}, "lime-0", NOW)
    assert (
        status["phase"] == RUNNING and status["coordinator"] == "lime-0" and status["starts"] == 1
    )
    assert event[1] == "Restoring"
    running = {"current": {"id": "restore-B1", "phase": "running",
                           "progress": {"keys": 500, "fraction": 0.5}}, "last": None}  # fmt: skip
    follow = restoring.step(status, True, "ignored once running", running, NOW)
    assert follow.action == "follow" and follow.status["phase"] == RUNNING
    assert follow.status["progress"] == "50%" and follow.status["keys"] == 500
    done = {"current": None, "last": {"id": "restore-B1", "phase": "complete",
                                      "progress": {"keys": 1000}}}  # fmt: skip
    end = restoring.step(follow.status, True, "", done, NOW)
    assert end.status["phase"] == COMPLETED and end.events[0][1] == "RestoreCompleted"
    assert restoring.condition(end.status)["status"] == "True"
    # Completed is final: no more requests.
    assert restoring.step(end.status, True, "", None, NOW).action == "none"


def test_a_restore_its_coordinator_lost_is_asked_again_then_given_up():
    status = {"phase": RUNNING, "job": "restore-B1", "coordinator": "lime-0", "starts": 1}
    lost = {"current": None, "last": None}  # the coordinator restarted
    again = restoring.step(status, True, restoring.source_of({"s3": S3}, None), lost, NOW)
    assert again.action == "start" and again.status["phase"] == PENDING
    worn = {**status, "starts": restoring.MAX_STARTS}
    final = restoring.step(worn, True, restoring.source_of({"s3": S3}, None), lost, NOW)
    assert final.action == "none" and final.status["phase"] == FAILED


def test_only_a_missing_backup_or_a_cluster_with_data_is_a_final_refusal():
    assert restoring.refused({}, 404, "no complete backup")[1]
    assert restoring.refused({}, 409, "the cluster already holds data (lime-0 (5 keys))")[1]
    status, final = restoring.refused({}, 409, "ring transition 7 is running")
    assert not final and status["phase"] == PENDING
    assert not restoring.refused({}, 502, "object store: timeout")[1]
