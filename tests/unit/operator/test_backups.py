"""LimeBackup and LimeBackupSchedule decisions: a backup's phase follows its coordinator's job
and never reports an unfinished one complete; schedules run when due, never two at once, and
prune only finished backups beyond keepLast."""

from datetime import UTC, datetime, timedelta

import pytest
from limedb_operator import backups, cron
from limedb_operator.backups import (
    COMPLETED,
    FAILED,
    RUNNING,
    BackupView,
    S3Target,
    follow_job,
    schedule_step,
    to_prune,
)

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def job(phase="running", **progress):
    p = {"files_done": 1, "files_total": 4, "bytes_done": 512, "bytes_total": 2048,
         "bytes_uploaded": 512, "keys": 0, "fraction": 0.25, "eta_s": 3.0, **progress}  # fmt: skip
    return {"id": "b1", "backup_id": "b1", "phase": phase, "error": None,
            "finished_ms": 1_796_292_000_000 if phase != "running" else None, "progress": p}  # fmt: skip


def test_s3_target_reads_the_spec_and_the_secret_keys():
    target = S3Target.from_spec({"bucket": "b", "prefix": "/prod/", "endpoint": "http://s3:8333",
                                 "credentialsSecret": {"name": "s3", "accessKeyIdKey": "id"}})  # fmt: skip
    assert target.url == "s3://b/prod" and target.endpoint == "http://s3:8333"
    creds = target.credentials({"id": "AK", "AWS_SECRET_ACCESS_KEY": "SK"})
    assert creds == {"aws_access_key_id": "AK", "aws_secret_access_key": "SK"}
    with pytest.raises(KeyError, match="AWS_SECRET_ACCESS_KEY"):
        target.credentials({"id": "AK"})
    # Without a Secret the node's own chain applies: no credentials sent.
    assert S3Target.from_spec({"bucket": "b"}).credentials({}) == {}


def test_a_running_job_reports_its_progress():
    view = follow_job("b1", {"current": job(), "last": None}, None, NOW)
    assert view.phase == RUNNING and view.event is None
    assert view.fields["progress"] == "25%" and view.fields["bytesDone"] == 512
    assert view.fields["filesTotal"] == 4 and view.fields["etaSeconds"] == 3


def test_a_complete_job_completes_the_backup_with_its_size():
    view = follow_job("b1", {"current": None, "last": job("complete", bytes_done=2048)}, None, NOW)
    assert view.phase == COMPLETED and view.fields["progress"] == "100%"
    assert view.fields["size"] == "2.0 KiB" and view.fields["completedAt"]
    assert view.event[:2] == ("Normal", "Completed")


def test_a_failed_job_fails_the_backup_with_the_nodes_reason():
    failed = {**job("failed"), "error": "node lime-2 unreachable for 30 s"}
    view = follow_job("b1", {"current": None, "last": failed}, None, NOW)
    assert view.phase == FAILED and "lime-2 unreachable" in view.fields["message"]


def test_a_coordinator_that_restarted_and_lost_the_job_fails_it_never_completes_it():
    other = {**job("complete"), "id": "b0"}
    view = follow_job("b1", {"current": None, "last": other}, None, NOW)
    assert view.phase == FAILED and view.lost and "restarted" in view.fields["message"]


def test_a_silent_coordinator_is_waited_for_then_the_backup_fails():
    view = follow_job("b1", None, None, NOW)
    assert view.phase == RUNNING and view.fields["lostSince"] == "2026-12-03T10:00:00Z"
    since = NOW - timedelta(seconds=backups.LOST_AFTER_S - 1)
    assert follow_job("b1", None, since, NOW).phase == RUNNING
    since = NOW - timedelta(seconds=backups.LOST_AFTER_S + 1)
    late = follow_job("b1", None, since, NOW)
    assert late.phase == FAILED and "did not answer" in late.fields["message"]


def v(name, phase, minute, backup_id=None):
    created = (NOW + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return BackupView(name, phase, created, backup_id or (name if phase == COMPLETED else None))


def test_retention_prunes_the_oldest_completed_beyond_keep_last_and_never_a_running_one():
    views = [v("a", COMPLETED, 0), v("b", FAILED, 1), v("c", COMPLETED, 2), v("d", COMPLETED, 3),
             v("e", RUNNING, 4), v("f", FAILED, 5), v("g", "", 6)]  # fmt: skip
    assert [p.name for p in to_prune(views, 2)] == ["a"]
    assert [p.name for p in to_prune(views, 1)] == ["a", "b", "c"]
    assert all(p.phase in (COMPLETED, FAILED) for p in to_prune(views, 0))


def test_a_schedule_creates_one_backup_when_due_and_skips_while_one_runs():
    every = cron.parse("@every 30s")
    early = schedule_step(every, NOW, NOW + timedelta(seconds=29), [], 3)
    assert early.fire is None and not early.create
    assert early.next_at == NOW + timedelta(seconds=30)
    due = schedule_step(every, NOW, NOW + timedelta(seconds=31), [], 3)
    assert due.create and due.fire == NOW + timedelta(seconds=30)
    assert due.next_at == NOW + timedelta(seconds=60)
    busy = schedule_step(every, NOW, NOW + timedelta(seconds=31), [v("x", RUNNING, 0)], 3)
    assert busy.fire is not None and not busy.create
    paused = schedule_step(every, NOW, NOW + timedelta(hours=1), [], 3, suspended=True)
    assert paused.fire is None and not paused.create


def test_the_backup_of_a_run_is_named_by_its_fire_time_and_owned_by_the_schedule():
    schedule = {"apiVersion": "limedb.io/v1alpha1", "kind": "LimeBackupSchedule",
                "metadata": {"name": "nightly", "namespace": "ns", "uid": "u"},
                "spec": {"cluster": "lime", "schedule": "@daily", "keepLast": 3,
                         "s3": {"bucket": "b"}}}  # fmt: skip
    owner = {"kind": "LimeBackupSchedule", "name": "nightly", "uid": "u"}
    obj = backups.backup_object(schedule, NOW, owner)
    assert obj["metadata"]["name"] == "nightly-20261203100000"
    assert obj["metadata"]["labels"] == {backups.SCHEDULE_LABEL: "nightly"}
    assert obj["metadata"]["ownerReferences"] == [owner]
    assert obj["spec"] == {"cluster": "lime", "s3": {"bucket": "b"}}
