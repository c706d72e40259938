"""Pure decisions of LimeBackup and LimeBackupSchedule: the S3 target of a spec, a backup's
status from the coordinating node's job, when a schedule runs next and which of its backups
retention prunes. No I/O here (backup_reconcile.py does it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from limedb_operator import cron

BACKUP_PLURAL = "limebackups"
BACKUP_KIND = "LimeBackup"
SCHEDULE_PLURAL = "limebackupschedules"
SCHEDULE_KIND = "LimeBackupSchedule"
SCHEDULE_LABEL = "limedb.io/backup-schedule"

PENDING, RUNNING, COMPLETED, FAILED = "Pending", "Running", "Completed", "Failed"
TERMINAL = (COMPLETED, FAILED)
# A coordinating node that does not answer this long has lost the job with it (a backup's job
# lives in the coordinator's memory; a backup without its manifest is not complete anyway).
LOST_AFTER_S = 60.0
DEFAULT_KEYS = {
    "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
    "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY",
    "sessionTokenKey": "AWS_SESSION_TOKEN",
}
CREDENTIAL_FIELDS = {
    "accessKeyIdKey": "aws_access_key_id",
    "secretAccessKeyKey": "aws_secret_access_key",
    "sessionTokenKey": "aws_session_token",
}


@dataclass(frozen=True)
class S3Target:
    """Where backups go: `s3://bucket/prefix` at `endpoint`, credentials in a Secret."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    secret: str | None = None  # the Secret's name
    keys: tuple[tuple[str, str], ...] = ()  # (credential field, key in the Secret)

    @classmethod
    def from_spec(cls, s3: Mapping[str, Any]) -> S3Target:
        ref = s3.get("credentialsSecret") or {}
        keys = tuple(
            (field, str(ref.get(name) or DEFAULT_KEYS[name]))
            for name, field in CREDENTIAL_FIELDS.items()
        )
        return cls(
            bucket=str(s3["bucket"]),
            prefix=str(s3.get("prefix") or "").strip("/"),
            endpoint=s3.get("endpoint") or None,
            region=s3.get("region") or None,
            secret=ref.get("name") or None,
            keys=keys if ref.get("name") else (),
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def credentials(self, data: Mapping[str, str]) -> dict[str, str]:
        """The node's `credentials` body from the Secret's decoded data; KeyError names a
        required key that is missing (the session token is optional)."""
        out = {}
        for field, key in self.keys:
            if key in data and data[key]:
                out[field] = data[key]
            elif field != "aws_session_token":
                raise KeyError(f"Secret {self.secret} has no key {key!r}")
        return out


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_job(node_status: Mapping[str, Any], job_id: str) -> dict[str, Any] | None:
    """Job `job_id` in a node's `GET /admin/backup/status` ({"current", "last"})."""
    for slot in ("current", "last"):
        job = node_status.get(slot)
        if job and job.get("id") == job_id:
            return dict(job)
    return None


def progress_fields(job: Mapping[str, Any]) -> dict[str, Any]:
    """Status fields of a job's progress (the node's Progress.to_json)."""
    p = job.get("progress") or {}
    fields: dict[str, Any] = {
        "progress": f"{int(100 * float(p.get('fraction') or 0))}%",
        "filesDone": int(p.get("files_done") or 0),
        "filesTotal": int(p.get("files_total") or 0),
        "bytesDone": int(p.get("bytes_done") or 0),
        "bytesTotal": int(p.get("bytes_total") or 0),
        "bytesUploaded": int(p.get("bytes_uploaded") or 0),
        "keys": int(p.get("keys") or 0),
    }
    if p.get("eta_s") is not None:
        fields["etaSeconds"] = int(p["eta_s"])
    return fields


@dataclass(frozen=True)
class JobView:
    """What the operator learnt of a job this tick: the phase it is in now, the status fields
    to publish, and an event when the phase changed."""

    phase: str
    fields: dict[str, Any]
    event: tuple[str, str, str] | None = None
    lost: bool = False  # the coordinator does not know the job (restarted)


def follow_job(
    job_id: str,
    node_status: Mapping[str, Any] | None,
    lost_since: datetime | None,
    now: datetime,
    what: str = "backup",
) -> JobView:
    """The phase of job `job_id` from its coordinator's status (None: it did not answer)."""
    if node_status is None:
        since = lost_since or now
        if (now - since).total_seconds() > LOST_AFTER_S:
            message = (f"the coordinating node did not answer for {LOST_AFTER_S:.0f} s; the "
                       f"{what} is not complete")  # fmt: skip
            return JobView(FAILED, {"message": message, "lostSince": None},
                           ("Warning", "Failed", message), lost=True)  # fmt: skip
        return JobView(RUNNING, {"lostSince": format_time(since),
                                 "message": "the coordinating node does not answer"})  # fmt: skip
    job = find_job(node_status, job_id)
    if job is None:
        message = f"the coordinating node restarted; the {what} {job_id} is not complete"
        return JobView(FAILED, {"message": message, "lostSince": None},
                       ("Warning", "Failed", message), lost=True)  # fmt: skip
    fields = {**progress_fields(job), "lostSince": None}
    if job.get("phase") == "complete":
        fields["progress"] = "100%"
        fields["size"] = human_size(fields["bytesTotal"])
        fields["message"] = f"{what} {job_id} complete"
        if job.get("finished_ms"):
            fields["completedAt"] = format_time(
                datetime.fromtimestamp(job["finished_ms"] / 1000, UTC)
            )
        return JobView(COMPLETED, fields, ("Normal", "Completed", fields["message"]))
    if job.get("phase") == "failed":
        message = f"{what} {job_id} failed: {job.get('error') or 'no reason given'}"
        fields["message"] = message[:1000]
        return JobView(FAILED, fields, ("Warning", "Failed", fields["message"]))
    fields["message"] = f"{what} {job_id} running"
    return JobView(RUNNING, fields)


def backup_conditions(phase: str, message: str) -> list[dict[str, Any]]:
    """A LimeBackup's conditions (as a Job's): Complete and Failed."""
    return [
        {"type": "Complete", "status": "True" if phase == COMPLETED else "False",
         "reason": phase or PENDING, "message": message if phase == COMPLETED else ""},
        {"type": "Failed", "status": "True" if phase == FAILED else "False",
         "reason": phase or PENDING, "message": message if phase == FAILED else ""},
    ]  # fmt: skip


# ---------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class BackupView:
    """One LimeBackup of a schedule, as retention sees it."""

    name: str
    phase: str
    created: str  # creationTimestamp
    backup_id: str | None = None

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL


@dataclass(frozen=True)
class ScheduleDecision:
    fire: datetime | None  # the run due now, if any
    create: bool  # make a LimeBackup for `fire` (False: skipped, the previous one still runs)
    next_at: datetime
    prune: tuple[BackupView, ...]


def backup_name(schedule: str, fire: datetime) -> str:
    """The LimeBackup a schedule makes for the run at `fire` (one per fire time: a retried
    create finds it instead of making a second)."""
    return f"{schedule[:40]}-{fire.astimezone(UTC):%Y%m%d%H%M%S}"


def to_prune(backups: Sequence[BackupView], keep_last: int) -> tuple[BackupView, ...]:
    """Completed backups beyond the newest `keep_last`, and failed ones beyond the newest
    `keep_last` failed; a running one is never pruned."""
    out: list[BackupView] = []
    for phase in (COMPLETED, FAILED):
        done = sorted((b for b in backups if b.phase == phase),
                      key=lambda b: (b.created, b.name), reverse=True)  # fmt: skip
        out.extend(done[keep_last:])
    return tuple(sorted(out, key=lambda b: (b.created, b.name)))


def schedule_step(
    schedule: cron.Schedule,
    since: datetime,
    now: datetime,
    backups: Sequence[BackupView],
    keep_last: int,
    suspended: bool = False,
) -> ScheduleDecision:
    """`since`: the last run's fire time, or the schedule's creation. A run due while the
    previous backup of the schedule is still active is skipped (never two at once)."""
    fire = None if suspended else cron.due(schedule, since, now)
    active = any(b.active for b in backups)
    next_at = schedule.next_after(fire or since)
    return ScheduleDecision(fire, fire is not None and not active, next_at,
                            to_prune(backups, keep_last))  # fmt: skip


def backup_object(
    schedule: Mapping[str, Any], fire: datetime, owner_reference: Mapping[str, Any]
) -> dict[str, Any]:
    """The LimeBackup a schedule creates for its run at `fire`."""
    meta = schedule["metadata"]
    spec = schedule["spec"]
    return {
        "apiVersion": schedule["apiVersion"],
        "kind": BACKUP_KIND,
        "metadata": {
            "name": backup_name(meta["name"], fire),
            "namespace": meta["namespace"],
            "labels": {SCHEDULE_LABEL: meta["name"]},
            "ownerReferences": [dict(owner_reference)],
        },
        "spec": {"cluster": spec["cluster"], "s3": dict(spec["s3"])},
    }
