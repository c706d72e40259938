"""One reconcile step of a LimeBackup, a LimeBackupSchedule, and of a LimeCluster's
spec.restoreFrom: observe (objects, the coordinating node's job) -> decide (backups.py,
restoring.py, pure) -> act once (the node admin API, the bucket, LimeBackup objects)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from limedb_operator import (
    admin_access,
    backups,
    cron,
    database,
    issuing,
    manifests,
    restoring,
    tls,
)
from limedb_operator.backups import (
    BACKUP_PLURAL,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    TERMINAL,
    S3Target,
    format_time,
    parse_time,
)
from limedb_operator.kube import Kube
from limedb_operator.scaling import PodView
from limedb_operator.status import merge_conditions

log = logging.getLogger(__name__)

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Result:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _cluster_secret(kube: Kube, cluster: str, namespace: str) -> str | None:
    data = kube.secret_data(manifests.secret_name(cluster), namespace)
    return None if data is None else data.get(manifests.CLUSTER_SECRET_KEY)


def _cluster_access(kube: Kube, cluster: str, namespace: str) -> tuple[database.Access, str]:
    """How to reach the cluster's nodes: its admin user and secret, and with spec.tls the CA
    (none yet: the call fails and the next tick asks again); and the scheme of their URLs."""
    body = kube.lime_object(manifests.PLURAL, cluster, namespace) or {}
    spec = manifests.with_defaults(body.get("spec") or {})
    ca = issuing.current_ca(kube, cluster, namespace, spec)
    secret = _cluster_secret(kube, cluster, namespace)
    access = admin_access.cluster_access(kube, cluster, namespace, spec, secret, ca)
    return access, tls.scheme(spec)


def _credentials(kube: Kube, target: S3Target, namespace: str) -> dict[str, str]:
    """The S3 credentials of `target` from its Secret ({} without one: the node's own chain).
    KeyError says what is missing."""
    if target.secret is None:
        return {}
    data = kube.secret_data(target.secret, namespace)
    if data is None:
        raise KeyError(f"Secret {target.secret} does not exist")
    return target.credentials(data)


def _ready(pods: Sequence[PodView]) -> list[PodView]:
    return [p for p in pods if p.ready and p.url and not p.terminating]


def _pod(pods: Sequence[PodView], name: str | None) -> PodView | None:
    return next((p for p in _ready(pods) if p.name == name), None)


def _waiting(old: Mapping[str, Any], message: str, reason: str) -> Result:
    """Still Pending because of `message`: one Warning event when the reason changes."""
    events = [] if old.get("message") == message else [("Warning", reason, message)]
    return Result({"phase": PENDING, "message": message}, events)


# ---------------------------------------------------------------------- LimeBackup


def reconcile_backup(kube: Kube, body: Mapping[str, Any], now: datetime) -> Result:
    old = dict(body.get("status") or {})
    if old.get("phase") in TERMINAL:
        return Result({})
    result = _backup_step(kube, body, old, now)
    merged = {**old, **result.status}
    result.status["conditions"] = merge_conditions(
        old.get("conditions"),
        backups.backup_conditions(merged.get("phase") or PENDING, merged.get("message") or ""),
        format_time(now),
        body["metadata"].get("generation"),
    )
    return result


def _backup_step(kube: Kube, body: Mapping[str, Any], old: dict[str, Any], now: datetime) -> Result:
    namespace = body["metadata"]["namespace"]
    spec = body["spec"]
    cluster = spec["cluster"]
    target = S3Target.from_spec(spec["s3"])
    access, scheme = _cluster_access(kube, cluster, namespace)
    secret = access.secret
    pods = kube.pods(cluster, namespace, scheme)
    if old.get("phase") == RUNNING:
        pod = _pod(pods, old.get("coordinator"))
        node = None if pod is None else database.pod_target(namespace, pod)
        node_status = database.backup_status(node, access) if node else None
        view = backups.follow_job(
            str(old.get("job")), node_status, parse_time(old.get("lostSince")), now
        )
        events = [] if view.event is None else [view.event]
        return Result({**view.fields, "phase": view.phase}, events)
    if secret is None:
        return _waiting(old, f"LimeCluster {cluster} has no cluster secret yet (does it exist?)",
                        "ClusterNotFound")  # fmt: skip
    try:
        credentials = _credentials(kube, target, namespace)
    except KeyError as e:
        return _waiting(old, f"S3 credentials: {e.args[0]}", "CredentialsMissing")
    ready = _ready(pods)
    if not ready:
        return _waiting(old, f"no Ready pod of LimeCluster {cluster}", "ClusterNotReady")
    coordinator = ready[0]
    try:
        job = database.start_backup(database.pod_target(namespace, coordinator), access,
                                    target.url, target.endpoint, target.region, credentials)  # fmt: skip
    except database.StartRefused as e:
        if e.code in (400, 404):  # a bad location does not heal
            message = f"refused: {e}"[:1000]
            return Result({"phase": FAILED, "message": message}, [("Warning", "Failed", message)])
        return _waiting(old, f"not started yet: {e}"[:1000], "NotStarted")
    except Exception as e:  # the node did not answer: the next tick asks again
        log.info(
            "backup %s: %s did not start it: %s", body["metadata"]["name"], coordinator.name, e
        )
        return _waiting(old, f"{coordinator.name} did not answer: {e}"[:1000], "NotStarted")
    message = f"backup {job['backup_id']} to {target.url} coordinated by {coordinator.name}"
    status = {
        "phase": RUNNING,
        "backupId": job["backup_id"],
        "job": job["id"],
        "coordinator": coordinator.name,
        "location": target.url,
        "startedAt": format_time(now),
        "progress": "0%",
        "message": message,
    }
    return Result(status, [("Normal", "Started", message)])


# ---------------------------------------------------------------------- LimeBackupSchedule


def _schedule_owner(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": backups.SCHEDULE_KIND,
            "name": meta["name"], "uid": meta["uid"], "controller": True}  # fmt: skip


def _view(obj: Mapping[str, Any]) -> backups.BackupView:
    status = obj.get("status") or {}
    return backups.BackupView(
        obj["metadata"]["name"], status.get("phase") or "",
        obj["metadata"].get("creationTimestamp") or "", status.get("backupId"),
    )  # fmt: skip


def reconcile_schedule(kube: Kube, body: Mapping[str, Any], now: datetime) -> Result:
    meta, spec = body["metadata"], body["spec"]
    name, namespace = meta["name"], meta["namespace"]
    old = dict(body.get("status") or {})
    events: list[Event] = []
    try:
        schedule = cron.parse(spec["schedule"])
    except cron.CronError as e:
        message = f"schedule {spec['schedule']!r}: {e}"
        if old.get("message") != message:
            events.append(("Warning", "InvalidSchedule", message))
        return Result(_schedule_status(body, old, now, False, message, {}), events)
    since = parse_time(old.get("lastScheduleTime")) or parse_time(meta["creationTimestamp"])
    objs = kube.lime_objects(BACKUP_PLURAL, namespace, f"{backups.SCHEDULE_LABEL}={name}")
    views = [_view(o) for o in objs]
    decision = backups.schedule_step(
        schedule, since or now, now, views, int(spec.get("keepLast") or 1),
        bool(spec.get("suspend")),
    )  # fmt: skip
    fields: dict[str, Any] = {"nextScheduleTime": format_time(decision.next_at)}
    if decision.fire is not None:
        fields["lastScheduleTime"] = format_time(decision.fire)
        if decision.create:
            obj = backups.backup_object(body, decision.fire, _schedule_owner(body))
            if kube.create_lime_object(BACKUP_PLURAL, obj):
                events.append(
                    ("Normal", "Scheduled", f"created LimeBackup {obj['metadata']['name']}")
                )
                fields["lastBackup"] = obj["metadata"]["name"]
        else:
            events.append(("Normal", "Skipped", f"the run of {format_time(decision.fire)} is "
                           "skipped: the previous backup is still running"))  # fmt: skip
    pruned = _prune(kube, spec, namespace, decision.prune, events)
    kept = [v for v in views if v.name not in pruned]
    completed = sorted((v for v in kept if v.phase == COMPLETED), key=lambda v: (v.created, v.name))
    if completed:
        fields["lastSuccessfulBackup"] = completed[-1].name
    fields["backups"] = len(completed)
    fields["active"] = sum(1 for v in kept if v.active) + (1 if "lastBackup" in fields else 0)
    message = "suspended" if spec.get("suspend") else f"next run {fields['nextScheduleTime']}"
    return Result(_schedule_status(body, old, now, True, message, fields), events)


def _prune(
    kube: Kube, spec: Mapping[str, Any], namespace: str,
    doomed: Sequence[backups.BackupView], events: list[Event],
) -> set[str]:  # fmt: skip
    """Delete the pruned backups from the bucket, then their LimeBackup objects; a backup the
    bucket did not let go stays listed (the next tick tries again)."""
    if not doomed:
        return set()
    target = S3Target.from_spec(spec["s3"])
    ids = [v.backup_id for v in doomed if v.phase == COMPLETED and v.backup_id]
    if ids:
        from limedb_operator import bucket  # boto3 only when there is something to delete

        try:
            bucket.delete_backups(target, _credentials(kube, target, namespace), ids)
        except Exception as e:
            message = f"pruning {', '.join(ids)} from {target.url} failed: {e}"[:1000]
            log.warning("%s", message)
            events.append(("Warning", "PruneFailed", message))
            return set()
    for view in doomed:
        kube.delete_lime_object(BACKUP_PLURAL, view.name, namespace)
        what = f" and backup {view.backup_id}" if view.phase == COMPLETED else ""
        events.append(("Normal", "Pruned", f"deleted LimeBackup {view.name}{what} (keepLast)"))
    return {v.name for v in doomed}


def _schedule_status(
    body: Mapping[str, Any], old: Mapping[str, Any], now: datetime, valid: bool, message: str,
    fields: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    condition = {"type": "Valid", "status": "True" if valid else "False",
                 "reason": "ScheduleValid" if valid else "InvalidSchedule", "message": message}  # fmt: skip
    return {
        **fields,
        "message": message,
        "conditions": merge_conditions(
            old.get("conditions"), [condition], format_time(now), body["metadata"].get("generation")
        ),  # fmt: skip
    }


# ---------------------------------------------------------------------- spec.restoreFrom


def reconcile_restore(
    kube: Kube,
    namespace: str,
    restore_from: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    cluster_ready: bool,
    pods: Sequence[PodView],
    access: database.Access,
    now: datetime,
) -> Result:
    """The LimeCluster's status.restore after one step, and the events to post."""
    old = dict(old or {})
    if old.get("phase") in TERMINAL:
        return Result(old)
    named = None
    if restore_from.get("backup"):
        named = kube.lime_object(BACKUP_PLURAL, restore_from["backup"], namespace)
    source = restoring.source_of(restore_from, named)
    node_status = None
    if old.get("phase") == RUNNING:
        pod = _pod(pods, old.get("coordinator"))
        node = None if pod is None else database.pod_target(namespace, pod)
        node_status = database.backup_status(node, access) if node else None
    step = restoring.step(old, cluster_ready, source, node_status, now)
    if step.action != "start" or isinstance(source, str):
        return Result(step.status, step.events)
    try:
        credentials = _credentials(kube, source.target, namespace)
    except KeyError as e:
        waited = _waiting(step.status, f"S3 credentials: {e.args[0]}", "CredentialsMissing")
        return Result({**step.status, **waited.status}, waited.events)
    ready = _ready(pods)
    if not ready:
        return Result({**step.status, "phase": PENDING, "message": "no Ready pod"})
    coordinator = ready[0]
    target = source.target
    try:
        job = database.start_restore(database.pod_target(namespace, coordinator), access,
                                     target.url, source.backup_id, target.endpoint, target.region,
                                     credentials)  # fmt: skip
    except database.StartRefused as e:
        status, final = restoring.refused(step.status, e.code, f"restore refused: {e}")
        events = [] if step.status.get("message") == status["message"] and not final else [
            ("Warning", "RestoreFailed" if final else "RestoreWaiting", status["message"])]  # fmt: skip
        return Result(status, events)
    except Exception as e:  # the node did not answer: the next tick asks again
        return Result({**step.status, "phase": PENDING,
                       "message": f"{coordinator.name} did not answer: {e}"[:1000]})  # fmt: skip
    status, event = restoring.started(step.status, job, coordinator.name, now)
    return Result(status, [*step.events, event])
