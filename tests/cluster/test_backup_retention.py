"""Deleting backups keeps every table a remaining backup references, with the same code for
`limedb admin backup delete` and the operator's schedule retention
(limedb.cluster.backup.retention, limedb_operator.bucket), on a real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from limedb.cluster.backup.location import Location
from limedb.cluster.backup.store import ObjectStore
from limedb_operator import bucket
from limedb_operator.backups import S3Target

pytestmark = pytest.mark.process

LIMEDB = str(Path(sys.executable).with_name("limedb"))
BUCKET = "limedb-retention"


def manifest(backup_id: str, finished_ms: int, tables: list[str]) -> dict:
    return {"id": backup_id, "complete": True, "finished_ms": finished_ms,
            "nodes": {"n1": {"tables": [{"sha256": t, "size": 1} for t in tables]}}}  # fmt: skip


def seed(s3_server, prefix: str) -> ObjectStore:
    """Three backups: b1 {t1, t2}, b2 {t2, t3}, b3 {t3, t4}."""
    store = ObjectStore(Location.parse(f"s3://{BUCKET}/{prefix}", s3_server.endpoint),
                        {"aws_access_key_id": s3_server.access_key,
                         "aws_secret_access_key": s3_server.secret_key})  # fmt: skip
    store.ensure_bucket()
    s3 = s3_server.client()
    for table in ("t1", "t2", "t3", "t4"):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/tables/{table}", Body=b"x")
    for i, tables in enumerate((["t1", "t2"], ["t2", "t3"], ["t3", "t4"]), start=1):
        store.put_json(store.location.manifest_key(f"b{i}"), manifest(f"b{i}", i * 1000, tables))
    return store


def left(s3_server, prefix: str) -> tuple[set[str], set[str]]:
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = [o["Key"].removeprefix(f"{prefix}/") for o in listed.get("Contents", [])]
    backups = {k.split("/")[1].removesuffix(".json") for k in keys if k.startswith("backups/")}
    return backups, {k.split("/")[1] for k in keys if k.startswith("tables/")}


def test_the_cli_keeps_the_newest_and_every_table_they_reference(s3_server):
    seed(s3_server, "cli")
    env = {**os.environ, **s3_server.env()}
    done = subprocess.run(
        [LIMEDB, "admin", "backup", "delete", "--from", f"s3://{BUCKET}/cli",
         "--endpoint", s3_server.endpoint, "--keep-last", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "deleted 1 backups and 1 tables; kept 2 backups" in done.stdout, done.stdout
    assert left(s3_server, "cli") == ({"b2", "b3"}, {"t2", "t3", "t4"})


def test_the_operator_deletes_the_backups_it_prunes_and_keeps_shared_tables(s3_server):
    store = seed(s3_server, "op")
    target = S3Target(BUCKET, "op", s3_server.endpoint)
    creds = {"aws_access_key_id": s3_server.access_key,
             "aws_secret_access_key": s3_server.secret_key}  # fmt: skip
    assert bucket.delete_backups(target, creds, ["b2", "gone"]) == 1
    # t2 is b1's, t3 is b3's: both stay.
    assert left(s3_server, "op") == ({"b1", "b3"}, {"t1", "t2", "t3", "t4"})
    # While a backup runs, unreferenced tables stay (they may be its own).
    store.put_json(store.location.pending_key("b4"), {"id": "b4"})
    assert bucket.delete_backups(target, creds, ["b1"]) == 1
    assert left(s3_server, "op") == ({"b3"}, {"t1", "t2", "t3", "t4"})
    store.delete([store.location.pending_key("b4")])
    assert bucket.delete_backups(target, creds, ["b3"]) == 1
    assert left(s3_server, "op") == (set(), set())
