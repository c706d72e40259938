"""Deleting backups from a bucket: the manifests first, then every table no remaining backup
references, except while a backup is running (its tables may not be referenced yet). Used by
`limedb admin backup delete` and by the operator's LimeBackupSchedule retention."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from limedb.cluster.backup import manifest as manifests
from limedb.cluster.backup.store import ObjectStore

# A pending/ marker older than this is a backup whose coordinator died: it holds nothing back.
PENDING_MAX_AGE_S = 6 * 3600.0


def complete_backups(store: ObjectStore) -> list[dict[str, Any]]:
    """The manifests of the location's complete backups, oldest first."""
    found = []
    for obj in store.list("backups"):
        if obj.key.endswith(".json"):
            body = store.get_json(obj.key)
            if body is not None:
                found.append(body)
    return sorted(found, key=lambda m: (m["finished_ms"], m["id"]))


@dataclass(frozen=True)
class Deletion:
    doomed: list[str]  # backup ids whose manifests go
    kept: list[dict[str, Any]]  # the manifests that stay
    orphans: list[str]  # tables (sha256) no kept backup references, deleted with them
    running: int  # backups in progress: while there are any, orphans are kept


def plan(
    store: ObjectStore,
    doomed: Iterable[str],
    found: list[dict[str, Any]],
    now_s: float | None = None,
) -> Deletion:
    """What deleting backups `doomed` (of the complete backups `found`) removes."""
    now_s = time.time() if now_s is None else now_s
    doomed_ids = sorted(set(doomed))
    kept = [m for m in found if m["id"] not in doomed_ids]
    stored = (o.key.rsplit("/", 1)[-1] for o in store.list("tables"))
    orphans = manifests.unreferenced(stored, kept)
    running = [o for o in store.list("pending") if now_s - o.modified_s < PENDING_MAX_AGE_S]
    return Deletion(doomed_ids, kept, [] if running else orphans, len(running))


def carry_out(store: ObjectStore, deletion: Deletion) -> None:
    """Manifests first: a backup whose manifest is gone is no longer listed, verified or
    restored, so a deletion interrupted before its tables are gone leaves only garbage."""
    store.delete([store.location.manifest_key(b) for b in deletion.doomed])
    store.delete([store.location.table_key(sha) for sha in deletion.orphans])
