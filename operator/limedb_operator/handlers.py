"""kopf entry points, thin: decode the event, call reconcile, hand status and events to kopf."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from limedb_operator import backup_reconcile, backups, manifests, monitoring, reconcile
from limedb_operator.kube import Kube, load_config

RESOURCE = (manifests.GROUP, manifests.VERSION, manifests.PLURAL)
BACKUP = (manifests.GROUP, manifests.VERSION, backups.BACKUP_PLURAL)
SCHEDULE = (manifests.GROUP, manifests.VERSION, backups.SCHEDULE_PLURAL)
INTERVAL = 2.0
SCHEDULE_INTERVAL = 5.0  # @every schedules are at least cron.EVERY_MIN_S apart
_kube: Kube | None = None


def _client() -> Kube:
    global _kube
    if _kube is None:
        load_config()
        _kube = Kube(service_monitors=monitoring.settings_from_env(os.environ))
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping goes to annotations: status is fully described by the CRD schema
    # (anything else would be pruned), and our decisions never read these annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="limedb.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="limedb.io")
    # No deletion handler, so kopf puts no finalizer on a LimeCluster: deleting one never waits
    # for the operator (helm uninstall deletes the operator with it). pvcRetention.whenDeleted
    # is the StatefulSet's persistentVolumeClaimRetentionPolicy, carried out by the garbage
    # collector. The name is kept so kopf releases the finalizer of older releases.
    settings.persistence.finalizer = manifests.FINALIZER
    # A deleted LimeCluster waits for its timer to stop. kopf re-checks a timer that did not
    # exit at once (a tick was running) only every `cancellation_polling` (60 s by default):
    # `helm uninstall` and `kubectl delete` would hang that long. A tick takes about a second.
    settings.background.instant_exit_timeout = 3.0
    settings.background.cancellation_polling = 1.0
    # No CRD scanning: that needs cluster-wide list/watch on CRDs, which a namespaced operator
    # is not granted; the LimeCluster resource is known in advance.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    settings.networking.request_timeout = 30
    _client()


def _step(body: kopf.Body, patch: kopf.Patch) -> reconcile.Outcome:
    outcome = reconcile.reconcile(_client(), body)
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    return outcome


@kopf.timer(*RESOURCE, interval=INTERVAL)
def converge(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Level-triggered: every tick re-reads the world, so a restart simply resumes. The first
    tick runs as soon as a LimeCluster appears, so no separate create handler is needed (it
    would race this one)."""
    _step(body, patch)


def _post(body: kopf.Body, patch: kopf.Patch, result: backup_reconcile.Result) -> None:
    if result.status:
        patch.status.update(result.status)
    for kind, reason, message in result.events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in backups.TERMINAL


@kopf.timer(*BACKUP, interval=INTERVAL, when=_unfinished)
def backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Start the backup through a Ready node of the cluster, then follow it to its end; a
    Completed or Failed LimeBackup is left alone."""
    _post(
        body, patch, backup_reconcile.reconcile_backup(_client(), body, backup_reconcile.now_utc())
    )


@kopf.timer(*SCHEDULE, interval=SCHEDULE_INTERVAL)
def backup_schedule(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Create a LimeBackup when the schedule is due, prune beyond keepLast."""
    now = backup_reconcile.now_utc()
    _post(body, patch, backup_reconcile.reconcile_schedule(_client(), body, now))
