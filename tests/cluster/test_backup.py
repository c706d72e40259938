"""Cluster backup and restore against a real S3 server (issue 14, acceptance 1-4).

A 3-node RF=3 cluster holds 100,000 keys (every 10th with a TTL, every 50th deleted) and takes
writes while it is backed up with `limedb admin backup create` to SeaweedFS (`weed server
-s3`, tests/support/s3.py). The backup is read back in-process (the manifest's tables merged
to the newest version per key) to show that every acknowledged write is in it, and restored
with `limedb admin backup restore` into a fresh 5-node RF=3 cluster and a lone node: every key
reads back with its value, timestamp and expiry, deleted keys stay deleted, and every key is on
exactly its replicas. A node killed with SIGKILL mid-backup and mid-restore: the backup
resumes, a restore whose coordinator died is reported incomplete and completes when asked
again. Nodes stream (and so upload) at 2 MB/s, so that the kills land mid-way.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from limedb.cluster.backup import manifest as manifests
from limedb.cluster.backup.location import Location
from limedb.cluster.backup.restore_merge import newest_versions
from limedb.cluster.backup.store import ObjectStore
from limedb.storage.record import TOMBSTONE
from support.cluster import SECRET, SECRET_HEADERS, Cluster, Workload, loopback_nodes
from support.history import OK, WRITE, History
from support.s3 import S3Server
from support.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

LIMEDB = str(Path(sys.executable).with_name("limedb"))
KEYS = 100_000
BATCH = 1000
TTL_S = 3600
# Periodic fsync keeps the 100,000-key load short; a checkpoint flushes the memtable anyway.
ENV = {"LIMEDB_REPLICATION_FACTOR": "3", "LIMEDB_STREAM_MB_PER_S": "2",
       "LIMEDB_DURABILITY": "periodic"}  # fmt: skip


def key_name(i: int) -> str:
    return f"key-{i:06d}"


def has_ttl(i: int) -> bool:
    return i % 10 == 3


def deleted(i: int) -> bool:
    return i % 50 == 7


@dataclass
class Source:
    """The backed-up cluster, what it holds (key -> value, None = deleted) and the bucket."""

    cluster: Cluster
    s3: S3Server
    expected: dict[str, bytes | None]
    location: str
    backup_id: str = ""
    history: History = field(default_factory=History)
    started: float = 0.0


def cli(s3: S3Server, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIMEDB_CLUSTER_SECRET": SECRET, **s3.env()}
    return subprocess.run(
        [LIMEDB, "admin", "backup", *args], env=env, capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def start_cluster(base: Path, count: int, first_host: int, name: str) -> Cluster:
    nodes = loopback_nodes(base, count, first_host, name)
    for node in nodes:
        node.env = dict(ENV)
    cluster = Cluster(nodes, httpx.Client(timeout=30.0, headers=SECRET_HEADERS))
    for node in nodes:
        node.start()
    cluster.wait_ready(timeout_s=120)  # five nodes starting at once on two busy cores
    return cluster


def load(cluster: Cluster) -> dict[str, bytes | None]:
    """100,000 keys by /v1/batch from 4 threads, then every 50th deleted."""

    def put_batch(start: int) -> None:
        items = []
        for i in range(start, min(start + BATCH, KEYS)):
            item = {"key": key_name(i), "value": f"value-{i}-" + "x" * 40}
            if has_ttl(i):
                item["ttl"] = TTL_S
            items.append(item)
        url = cluster.urls[start // BATCH % len(cluster.urls)]
        # A 503 (replicas slow to acknowledge on a busy machine) acknowledged nothing: the
        # batch is sent again until it is acknowledged.
        wait_for(
            lambda: cluster.client.post(f"{url}/v1/batch", json={"put": items}).status_code
            == 200,
            120, f"batch {start} acknowledged", step_s=0.5,
        )  # fmt: skip

    def delete(i: int) -> None:
        url = cluster.urls[i % len(cluster.urls)]
        wait_for(
            lambda: cluster.client.delete(f"{url}/v1/kv/{key_name(i)}").status_code in (200, 404),
            60, f"delete of {key_name(i)} acknowledged", step_s=0.2,
        )  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(put_batch, range(0, KEYS, BATCH)))
        list(pool.map(delete, [i for i in range(KEYS) if deleted(i)]))
    return {
        key_name(i): None if deleted(i) else f"value-{i}-{'x' * 40}".encode() for i in range(KEYS)
    }


def backup_contents(s3: S3Server, location: str, backup_id: str, work: Path) -> dict:
    """key -> (ts, value or None if deleted, expires_at_ms or 0), merged from the tables."""
    store = ObjectStore(Location.parse(location, s3.endpoint), creds(s3))
    manifest = store.get_json(store.location.manifest_key(backup_id))
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for sha in manifests.tables_of(manifest):
        path = str(work / sha)
        assert store.get_file(store.location.table_key(sha), path, lambda _n: None) == sha
        paths.append(path)
    return {
        skey[8:].decode(): (rec[0], None if rec[2] & TOMBSTONE else rec[1], rec[3])
        for skey, rec in newest_versions(paths, None)
    }


def creds(s3: S3Server) -> dict[str, str]:
    return {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}


def manifest_of(s3: S3Server, location: str, backup_id: str) -> dict | None:
    store = ObjectStore(Location.parse(location, s3.endpoint), creds(s3))
    return store.get_json(store.location.manifest_key(backup_id))


@pytest.fixture(scope="module")
def source(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """The loaded 3-node cluster, backed up once under write load (acceptance 1's run)."""
    cluster = start_cluster(tmp_path_factory.mktemp("source"), 3, 2, "src")
    try:
        src = Source(cluster, s3_server, load(cluster), "s3://limedb-backups/prod")
        workload = Workload(src.history, cluster.urls, keys=200, threads=2)
        workload.start()
        try:
            wait_for(lambda: workload.acknowledged() >= 50, 30, "the workload's first writes")
            src.started = time.monotonic()
            out = ok(cli(s3_server, "create", "--to", src.location, "--endpoint",
                         s3_server.endpoint, "--url", cluster.urls[0]))  # fmt: skip
        finally:
            workload.stop()
        src.backup_id = out.strip().splitlines()[-1]
        yield src
    finally:
        cluster.stop()
        cluster.client.close()


def test_a_backup_under_write_load_holds_every_acknowledged_write_and_verifies(
    source: Source, tmp_path: Path
) -> None:
    s3 = source.s3
    manifest = manifest_of(s3, source.location, source.backup_id)
    assert manifest is not None and manifest["complete"]
    assert len(manifest["nodes"]) == 3
    assert manifest["replication_factor"] == 3 and manifest["ring"]["epoch"] >= 1
    assert manifest["cut_hlc"]["min"] > 0 and manifest["duration_s"] > 0
    assert manifest["bytes"] == manifest["bytes_uploaded"] > 0  # a first backup uploads all

    verified = ok(cli(s3, "verify", "--from", source.location, "--endpoint", s3.endpoint))
    assert f"backup {source.backup_id} verified" in verified
    listed = ok(cli(s3, "list", "--from", source.location, "--endpoint", s3.endpoint, "--json"))
    assert source.backup_id in listed

    contents = backup_contents(s3, source.location, source.backup_id, tmp_path / "tables")
    for key, value in source_expected_at_backup(source).items():
        _ts, stored, expires = contents[key]
        assert stored == value, key
        i = int(key.split("-")[1])
        assert (expires > 0) == (has_ttl(i) and not deleted(i)), key
    # Workload writes acknowledged before the backup started are in it (the newest version
    # of their key there is at least as new as theirs).
    before = [
        op for op in source.history.ops
        if op.kind == WRITE and op.outcome == OK and op.end is not None
        and op.end < source.started
    ]  # fmt: skip
    assert before
    for op in before:
        assert op.key in contents, op


def test_a_second_backup_after_one_percent_changed_uploads_under_ten_percent(
    source: Source,
) -> None:
    s3, cluster = source.s3, source.cluster
    location = "s3://limedb-backups/incremental"
    first = ok(cli(s3, "create", "--to", location, "--endpoint", s3.endpoint,
                   "--url", cluster.urls[1])).strip().splitlines()[-1]  # fmt: skip
    changed = {key_name(i): {"key": key_name(i), "value": f"changed-{i}"} for i in
               range(0, KEYS, 100)}  # fmt: skip
    items = list(changed.values())
    for start in range(0, len(items), BATCH):
        response = cluster.client.post(
            f"{cluster.urls[0]}/v1/batch", json={"put": items[start : start + BATCH]}
        )
        assert response.status_code == 200
    second = ok(cli(s3, "create", "--to", location, "--endpoint", s3.endpoint,
                    "--url", cluster.urls[2])).strip().splitlines()[-1]  # fmt: skip
    full, incremental = manifest_of(s3, location, first), manifest_of(s3, location, second)
    assert full is not None and incremental is not None
    ratio = incremental["bytes_uploaded"] / full["bytes_uploaded"]
    print(f"incremental backup uploaded {incremental['bytes_uploaded']} bytes, "
          f"{ratio:.3f} of the full one's {full['bytes_uploaded']}")  # fmt: skip
    assert ratio < 0.10
    # Retention: keep the newest; the tables it references all stay and it still verifies.
    ok(cli(s3, "delete", "--from", location, "--endpoint", s3.endpoint, "--keep-last", "1"))
    listed = ok(cli(s3, "list", "--from", location, "--endpoint", s3.endpoint, "--json"))
    assert second in listed and first not in listed
    ok(cli(s3, "verify", "--from", location, "--endpoint", s3.endpoint, "--backup", second))
    for key, item in changed.items():
        source.expected[key] = item["value"].encode()


def check_restored(target: Cluster, source: Source, expected: dict[str, bytes | None],
                   rf: int) -> None:  # fmt: skip
    client, urls = target.client, target.urls
    names = list(expected)
    for start in range(0, len(names), BATCH):
        part = names[start : start + BATCH]
        response = client.post(f"{urls[start // BATCH % len(urls)]}/v1/batch", json={"get": part})
        assert response.status_code == 200, response.text
        values = response.json()["values"]
        for key in part:
            want = expected[key]
            assert values[key] == (None if want is None else want.decode()), key
    # Timestamps and expiry are the originals.
    for i in range(3, 3000, 97):
        key = key_name(i)
        if expected[key] is None or i % 100 == 0:  # deleted, or changed since the backup
            continue
        was = source.cluster.client.get(f"{source.cluster.urls[0]}/v1/kv/{key}")
        now = client.get(f"{urls[-1]}/v1/kv/{key}")
        assert now.status_code == 200
        for header in ("x-limedb-timestamp", "x-limedb-expires-at-ms"):
            assert now.headers.get(header) == was.headers.get(header), (key, header)
    # Every live key on exactly its replicas: as many copies as RF in all, and the sampled
    # keys' replicas each hold it.
    live = sum(1 for v in expected.values() if v is not None)
    copies = 0
    for url in urls:
        after = None
        while True:
            params = {"limit": 10_000, **({"after": after} if after else {})}
            page = client.get(f"{url}/admin/keys", params=params).json()
            copies += sum(1 for key in page["keys"] if key in expected)
            after = page["next"]
            if after is None:
                break
    assert copies == live * rf
    for i in range(0, KEYS, 4999):
        key = key_name(i)
        if expected[key] is None:
            continue
        replicas = client.get(f"{urls[0]}/api/v1/replicas/{key}").json()["replicas"]
        assert len(replicas) == rf and all(r["has_value"] for r in replicas), (key, replicas)


def test_restore_into_five_nodes_rf3_survives_a_killed_coordinator_and_then_completes(
    source: Source, tmp_path: Path
) -> None:
    s3 = source.s3
    target = start_cluster(tmp_path, 5, 20, "five")
    try:
        args = ["restore", "--from", source.location, "--backup", source.backup_id,
                "--endpoint", s3.endpoint]  # fmt: skip
        env = {**os.environ, "LIMEDB_CLUSTER_SECRET": SECRET, **s3.env()}
        waiting = subprocess.Popen(
            [LIMEDB, "admin", "backup", *args, "--url", target.urls[0]], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def progressed() -> bool:
            status = target.client.get(f"{target.urls[0]}/admin/backup/status").json()
            assert status["last"] is None, "the restore ended before it could be interrupted"
            job = status["current"]
            return job is not None and job["progress"]["keys"] > 0

        wait_for(progressed, 60, "restore progress")
        target.nodes[0].kill()  # kill -9 the coordinator mid-restore
        _out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 1 and "not complete" in err, err
        # Asked again through another node while the dead one is down: refused, clearly.
        refused = cli(s3, *args, "--url", target.urls[1])
        assert refused.returncode == 3 and "unreachable" in refused.stderr, refused.stderr
        target.nodes[0].start()
        target.wait_ready()
        resumed = ok(cli(s3, *args, "--url", target.urls[1]))
        assert resumed.strip().splitlines()[-1] == source.backup_id
        check_restored(target, source, source_expected_at_backup(source), 3)
    finally:
        target.stop()
        target.client.close()


def source_expected_at_backup(source: Source) -> dict[str, bytes | None]:
    """What the first backup holds of the loaded keys (the incremental test changes some
    later: their value at the backup is the loaded one)."""
    return {
        key_name(i): None if deleted(i) else f"value-{i}-{'x' * 40}".encode() for i in range(KEYS)
    }


def test_restore_into_one_node_rf1_and_a_second_restore_is_refused(
    source: Source, tmp_path: Path
) -> None:
    s3 = source.s3
    target = start_cluster(tmp_path, 1, 40, "lone")
    try:
        restore = ["restore", "--from", source.location, "--backup", source.backup_id,
                   "--endpoint", s3.endpoint, "--url", target.urls[0]]  # fmt: skip
        assert ok(cli(s3, *restore)).strip().splitlines()[-1] == source.backup_id
        check_restored(target, source, source_expected_at_backup(source), 1)
        # The same backup again: already restored, nothing to do.
        ok(cli(s3, *restore))
        # Another backup into this cluster, which now holds data: refused without --merge.
        other = ok(cli(s3, "create", "--to", "s3://limedb-backups/other", "--endpoint",
                       s3.endpoint, "--url", source.cluster.urls[0])).strip().splitlines()[-1]  # fmt: skip
        refused = cli(s3, "restore", "--from", "s3://limedb-backups/other", "--endpoint",
                      s3.endpoint, "--url", target.urls[0])  # fmt: skip
        assert refused.returncode == 3 and "--merge" in refused.stderr, refused.stderr
        merged = cli(s3, "restore", "--from", "s3://limedb-backups/other", "--backup", other,
                     "--endpoint", s3.endpoint, "--url", target.urls[0], "--merge")  # fmt: skip
        ok(merged)
        # The newer versions (the incremental test's changes) won.
        changed = target.client.get(f"{target.urls[0]}/v1/kv/{key_name(100)}")
        assert changed.content == source.expected[key_name(100)]
    finally:
        target.stop()
        target.client.close()


def test_a_node_killed_mid_backup_rejoins_the_backup_which_completes(source: Source) -> None:
    s3, cluster = source.s3, source.cluster
    location = "s3://limedb-backups/killed"
    with httpx.Client(timeout=30.0, headers=SECRET_HEADERS) as client:
        body = {"to": location, "endpoint": s3.endpoint, "credentials": creds(s3)}
        started = client.post(f"{cluster.urls[0]}/admin/backup", json=body)
        assert started.status_code == 202, started.text
        backup_id = started.json()["job"]["backup_id"]
        victim, victim_node_id = cluster.nodes[2], victim_id(cluster, 2)

        def victim_state() -> str:
            status = client.get(f"{cluster.urls[0]}/admin/backup/status").json()
            assert status["current"] is not None, f"the backup ended: {status['last']}"
            return status["current"]["nodes"][victim_node_id]["state"]

        wait_for(lambda: victim_state() == "running", 60, "the victim's upload to start")
        victim.kill()  # kill -9 a participant mid-upload
        wait_for(lambda: victim_state() == "unreachable", 20,
                 "the coordinator to see the killed node unreachable")  # fmt: skip
        assert manifest_of(s3, location, backup_id) is None  # not complete: no manifest
        victim.start()
        cluster.wait_ready(timeout_s=120)

        def ended() -> dict | None:
            status = client.get(f"{cluster.urls[0]}/admin/backup/status").json()
            return status["last"] if status["current"] is None else None

        last = wait_for(ended, 120, "the backup to end")
    assert last["id"] == backup_id and last["phase"] == "complete", last
    assert manifest_of(s3, location, backup_id) is not None
    ok(cli(s3, "verify", "--from", location, "--endpoint", s3.endpoint))


def victim_id(cluster: Cluster, index: int) -> str:
    return cluster.client.get(f"{cluster.urls[index]}/admin/node").json()["node_id"]
