"""Pure decisions of `spec.restoreFrom` on a LimeCluster: restore a backup into the new cluster
once all its nodes are Ready members, follow the restore, ask again when its coordinator lost
it (the restore resumes from the last key every member recorded).

A restore never stops, restarts or removes a pod: the cluster is created as any other, and the
backup's keys are streamed into the running nodes through the admin API (`POST
/admin/restore`, docs/backup.md), so there is no pod to bring back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from limedb_operator.backups import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    S3Target,
    follow_job,
    format_time,
    parse_time,
)

CONDITION = "Restored"
# A restore whose coordinator lost it is asked again (it resumes); after this many starts it
# is reported Failed and left alone.
MAX_STARTS = 5


@dataclass(frozen=True)
class Source:
    """The backup to restore: its location and id (None: the newest in the location)."""

    target: S3Target
    backup_id: str | None


def source_of(
    restore_from: Mapping[str, Any], named_backup: Mapping[str, Any] | None
) -> Source | str:
    """The Source of `spec.restoreFrom`, or why it is not known yet. `named_backup` is the
    LimeBackup `restoreFrom.backup` names (None when it does not exist)."""
    name = restore_from.get("backup")
    if name:
        if named_backup is None:
            return f"LimeBackup {name} does not exist"
        status = named_backup.get("status") or {}
        if status.get("phase") != COMPLETED or not status.get("backupId"):
            return f"LimeBackup {name} is {status.get('phase') or PENDING}, not Completed"
        return Source(S3Target.from_spec(named_backup["spec"]["s3"]), status["backupId"])
    return Source(S3Target.from_spec(restore_from["s3"]), restore_from.get("backupId") or None)


@dataclass(frozen=True)
class RestoreStep:
    """`start`: ask a node to restore; `follow`: poll the job; `none`: nothing to do now."""

    action: str
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)


def step(
    old: Mapping[str, Any] | None,
    cluster_ready: bool,
    source: Source | str,
    node_status: Mapping[str, Any] | None,
    now: datetime,
) -> RestoreStep:
    """The next step of a restore from the previous `status.restore` (`old`), whether every
    node is a Ready member, the source, and the coordinator's backup status (None when it did
    not answer or there is no job yet)."""
    old = dict(old or {})
    phase = old.get("phase") or PENDING
    if phase in (COMPLETED, FAILED):
        return RestoreStep("none", old)
    if phase == PENDING:
        if isinstance(source, str):
            return RestoreStep("none", {**old, "phase": PENDING, "message": source})
        if not cluster_ready:
            return RestoreStep("none", {**old, "phase": PENDING,
                                        "message": "waiting for every node to be a Ready member"})  # fmt: skip
        return RestoreStep("start", {**old, "phase": PENDING, "source": source.target.url})
    # Running: follow the job its coordinator runs.
    job = str(old.get("job") or "")
    view = follow_job(job, node_status, parse_time(old.get("lostSince")), now, "restore")
    new = {**old, **view.fields, "phase": view.phase}
    if view.lost:
        starts = int(old.get("starts") or 0)
        if starts >= MAX_STARTS:
            message = f"{view.fields['message']}; gave up after {starts} starts"
            return RestoreStep("none", {**new, "phase": FAILED, "message": message},
                               [("Warning", "RestoreFailed", message)])  # fmt: skip
        # Asked again, the restore resumes after the last key every member recorded.
        return RestoreStep("start", {**new, "phase": PENDING, "message": view.fields["message"]
                                     + "; asking again (it resumes)"})  # fmt: skip
    events = []
    if view.event is not None:
        kind, reason, message = view.event
        events.append((kind, "Restore" + reason, message))
    return RestoreStep("follow", new, events)


def started(
    old: Mapping[str, Any], job: Mapping[str, Any], coordinator: str, now: datetime
) -> tuple[dict[str, Any], tuple[str, str, str]]:
    """status.restore once `coordinator` accepted the restore (its 202 `job`), and the event."""
    status = {
        **old,
        "phase": RUNNING,
        "job": job["id"],
        "backupId": job.get("backup_id"),
        "coordinator": coordinator,
        "starts": int(old.get("starts") or 0) + 1,
        "startedAt": old.get("startedAt") or format_time(now),
        "message": f"restoring backup {job.get('backup_id')} through {coordinator}",
        "lostSince": None,
    }
    if job.get("phase") == "complete":  # already restored (a repeated request is a no-op)
        status["phase"] = COMPLETED
        status["progress"] = "100%"
    return status, ("Normal", "Restoring", status["message"])


def refused(old: Mapping[str, Any], code: int, message: str) -> tuple[dict[str, Any], bool]:
    """status.restore after the node refused to start (HTTP `code`), and whether that is final:
    a missing backup (404) or a cluster that already holds data (409 naming it) does not heal;
    another job or a ring transition (409), or the object store (502), may."""
    final = code == 404 or (code == 409 and "holds data" in message)
    phase = FAILED if final else PENDING
    return {**old, "phase": phase, "message": message[:1000]}, final


def condition(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `Restored` condition of a cluster with spec.restoreFrom."""
    if not status:
        return None
    phase = status.get("phase") or PENDING
    return {
        "type": CONDITION,
        "status": "True" if phase == COMPLETED else "False",
        "reason": {COMPLETED: "Restored", FAILED: "RestoreFailed", RUNNING: "Restoring"}.get(
            phase, "RestorePending"
        ),
        "message": str(status.get("message") or ""),
    }
