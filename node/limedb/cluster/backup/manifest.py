"""The pure decisions of backups: ids, the manifest, which backup is newest, retention.

A manifest (`prefix/backups/<id>.json`, written last, so its presence means the backup is
complete) records the ring record the cut was taken at, every node's tables with their sha256
and sizes, the HLC time of each node's cut, the totals and the duration.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

FORMAT = 1
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def new_backup_id(now_s: float) -> str:
    """Sortable by time: `20261203T071500Z-1a2b3c`."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s)) + "-" + secrets.token_hex(3)


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 90s, 30m, 12h, 7d or 2w, got {text!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def build_manifest(
    backup_id: str,
    ring_record: dict[str, Any],
    nodes: dict[str, dict[str, Any]],
    started_ms: int,
    finished_ms: int,
    bytes_uploaded: int,
) -> dict[str, Any]:
    """`nodes`: node id -> {url, cut_hlc, tables: [{sha256, size, entries}]}."""
    tables = [t for node in nodes.values() for t in node["tables"]]
    cuts = [node["cut_hlc"] for node in nodes.values()]
    return {
        "format": FORMAT,
        "id": backup_id,
        "complete": True,
        "started_ms": started_ms,
        "finished_ms": finished_ms,
        "duration_s": round((finished_ms - started_ms) / 1000, 3),
        "cut_hlc": {"min": min(cuts, default=0), "max": max(cuts, default=0)},
        "ring": ring_record,
        "replication_factor": ring_record.get("rf", 1),
        "nodes": nodes,
        "files": len(tables),
        "bytes": sum(t["size"] for t in tables),
        "entries": sum(t.get("entries", 0) for t in tables),
        "bytes_uploaded": bytes_uploaded,
    }


def tables_of(manifest: dict[str, Any]) -> dict[str, int]:
    """sha256 -> size of every table the backup references."""
    return {t["sha256"]: t["size"] for node in manifest["nodes"].values() for t in node["tables"]}


def newest(manifests: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    complete = [m for m in manifests if m.get("complete")]
    return max(complete, key=lambda m: (m["finished_ms"], m["id"]), default=None)


def expired(
    manifests: list[dict[str, Any]],
    keep_last: int | None,
    older_than_s: float | None,
    now_ms: int,
) -> list[str]:
    """Ids of the backups retention deletes. A backup is kept when it is among the newest
    `keep_last`, or younger than `older_than_s`; with neither given nothing is deleted."""
    if keep_last is None and older_than_s is None:
        return []
    ordered = sorted(manifests, key=lambda m: (m["finished_ms"], m["id"]), reverse=True)
    doomed = []
    for rank, manifest in enumerate(ordered):
        kept_by_count = keep_last is not None and rank < keep_last
        age_s = (now_ms - manifest["finished_ms"]) / 1000
        kept_by_age = older_than_s is not None and age_s < older_than_s
        if keep_last is not None and older_than_s is not None:
            keep = kept_by_count or kept_by_age
        else:
            keep = kept_by_count if keep_last is not None else kept_by_age
        if not keep:
            doomed.append(manifest["id"])
    return doomed


def unreferenced(stored: Iterable[str], kept: Iterable[dict[str, Any]]) -> list[str]:
    """Tables (sha256) no kept backup references."""
    referenced: set[str] = set()
    for manifest in kept:
        referenced.update(tables_of(manifest))
    return sorted(set(stored) - referenced)
