"""The operator's door to a backup bucket, for LimeBackupSchedule retention: deleting backups
with the same code as `limedb admin backup delete` (limedb.cluster.backup.retention: manifests
first, then every table no remaining backup references)."""

from __future__ import annotations

from collections.abc import Sequence

from limedb_operator.backups import S3Target


def delete_backups(target: S3Target, credentials: dict[str, str], ids: Sequence[str]) -> int:
    """Delete backups `ids` (those still in the bucket) from `target`; how many were there."""
    from limedb.cluster.backup import retention
    from limedb.cluster.backup.location import Location
    from limedb.cluster.backup.store import ObjectStore

    store = ObjectStore(Location.parse(target.url, target.endpoint, target.region), credentials)
    found = retention.complete_backups(store)
    present = {m["id"] for m in found} & set(ids)
    retention.carry_out(store, retention.plan(store, present, found))
    return len(present)
