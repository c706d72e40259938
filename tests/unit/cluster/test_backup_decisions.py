"""Backups' pure decisions: where objects go, which backups retention deletes, which tables
stay referenced, and the newest version of every key across a backup's tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from limedb.cluster.backup import manifest as manifests
from limedb.cluster.backup.location import Location, LocationError
from limedb.cluster.backup.restore_merge import newest_versions, next_chunk, write_batch_of
from limedb.cluster.streaming import iter_entries
from limedb.hlc import HLC
from limedb.storage import Engine, EngineOptions

DAY_MS = 86_400_000


def backup(backup_id: str, finished_ms: int, tables: list[str]) -> dict:
    nodes = {
        "n0": {"url": "u", "cut_hlc": 1, "tables": [{"sha256": t, "size": 10} for t in tables]}
    }
    return manifests.build_manifest(backup_id, {"rf": 3}, nodes, finished_ms - 5, finished_ms, 0)


def test_a_location_names_bucket_prefix_and_content_addressed_keys() -> None:
    loc = Location.parse("s3://bucket/team/lime/", "http://127.0.0.1:8333")
    assert (loc.bucket, loc.prefix, loc.url) == ("bucket", "team/lime", "s3://bucket/team/lime")
    assert loc.table_key("ab12") == "team/lime/tables/ab12"
    assert loc.manifest_key("b1") == "team/lime/backups/b1.json"
    assert Location.parse("s3://b").table_key("x") == "tables/x"
    for bad in ("http://b/p", "s3://", "s3:///prefix"):
        with pytest.raises(LocationError):
            Location.parse(bad)


def test_retention_keeps_the_newest_n_and_the_young_ones() -> None:
    now = 100 * DAY_MS
    found = [backup(f"b{i}", now - (10 - i) * DAY_MS, []) for i in range(10)]  # b9 newest
    assert manifests.expired(found, None, None, now) == []
    assert sorted(manifests.expired(found, 3, None, now)) == [f"b{i}" for i in range(7)]
    young = manifests.expired(found, None, 4.5 * 86400, now)
    assert sorted(young) == [f"b{i}" for i in range(6)]  # b6..b9 are 1..4 days old
    # Both: kept when either keeps it.
    assert sorted(manifests.expired(found, 2, 4.5 * 86400, now)) == [f"b{i}" for i in range(6)]
    assert manifests.expired(found, 0, None, now) == [f"b{i}" for i in range(9, -1, -1)]


def test_a_table_a_kept_backup_references_is_never_unreferenced() -> None:
    kept = [backup("new", 2, ["t2", "t3"])]
    assert manifests.unreferenced(["t1", "t2", "t3", "t4"], kept) == ["t1", "t4"]
    assert (
        manifests.newest([backup("a", 1, []), backup("b", 3, []), backup("c", 2, [])])["id"] == "b"
    )
    assert manifests.parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError):
        manifests.parse_duration("7 days")


def _tables(path: Path, writes: list[tuple]) -> list[str]:
    with Engine.open(path, EngineOptions(durability="none")) as engine:
        for key, value, ts, expires in writes:
            if value is None:
                engine.delete(key, ts=ts)
            else:
                engine.put(key, value, ts=ts, expires_at_ms=expires)
        engine.flush()
    return sorted(str(p) for p in path.glob("*.sst"))


def test_the_merge_keeps_the_newest_version_of_each_key_with_tombstones_and_expiry(
    tmp_path: Path,
) -> None:
    # Three replicas' tables; replica b missed the delete of k2 and holds an older k1.
    a = _tables(tmp_path / "a", [(b"k1", b"new", 20, None), (b"k2", None, 30, None),
                                 (b"k3", b"ttl", 5, 123456)])  # fmt: skip
    b = _tables(tmp_path / "b", [(b"k1", b"old", 10, None), (b"k2", b"gone", 25, None),
                                 (b"k4", b"only-b", 7, None)])  # fmt: skip
    merged = dict(newest_versions(a + b, None))
    assert merged[b"k1"][:2] == (20, b"new")
    assert merged[b"k2"][0] == 30 and merged[b"k2"][2] & 1  # the tombstone wins
    assert merged[b"k3"][3] == 123456
    assert merged[b"k4"][1] == b"only-b"
    # Resuming after k2 yields only the keys after it.
    assert [k for k, _ in newest_versions(a + b, b"k2")] == [b"k3", b"k4"]
    # Chunks go to every owner, encoded as STREAM_APPLY entries, and decode back.
    stream = newest_versions(a + b, None)
    chunk = next_chunk(stream, lambda skey: ("x", "y") if skey == b"k1" else ("x",), 3)
    assert (chunk.keys, chunk.last_key, chunk.done) == (3, b"k3", False)
    assert len(chunk.by_owner["x"]) == 3 and len(chunk.by_owner["y"]) == 1
    decoded = list(iter_entries(b"".join(chunk.by_owner["x"])))
    assert decoded[1] == (b"k2", b"", 30, None, True)
    assert decoded[2] == (b"k3", b"ttl", 5, 123456, False)
    rest = next_chunk(stream, lambda _k: ("x",), 3)
    assert (rest.keys, rest.done) == (1, True)
    hlc = HLC()
    batch = write_batch_of(b"".join(chunk.by_owner["x"]), hlc)
    assert len(batch.ops) == 3 and hlc.last > 30
