"""Backup benchmark: back up a 3-node RF=3 cluster holding 1,000,000 keys (100-byte values) to
a real S3 server (SeaweedFS, `weed server -s3` on loopback, as the tests run it) under a
constant 50/50 read/write wrk load, change 1% of the keys and back up again, then restore the
first backup into a fresh 3-node cluster.

Prints MB/s and keys/s of the backup and of the restore, the client throughput during the
backup as a ratio of before it (the anchor, measured in the same run; goal >= 0.7), and the
incremental backup's uploaded bytes as a ratio of the full one's. The figures are written into
the "Backup" section of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_backup.py [--keys 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from _cluster import SECRET_HEADERS, LocalCluster
from _doc import replace_section
from bench_migration import WINDOW_S, LoadWindows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.s3 import S3Server, start_s3_server  # noqa: E402 - tests/support, path above

GOAL_RATIO = 0.7


def run_job(url: str, route: str, body: dict) -> tuple[dict, float]:
    """Start a backup or restore on `url` and poll it to the end: (the job, seconds)."""
    with httpx.Client(timeout=60.0, headers=SECRET_HEADERS) as client:
        started = time.monotonic()
        response = client.post(f"{url}{route}", json=body)
        if response.status_code != 202:
            raise SystemExit(f"{route} refused: {response.status_code} {response.text}")
        job_id = response.json()["job"]["id"]
        last_print = 0.0
        while True:
            status = client.get(f"{url}/admin/backup/status").json()
            last = status.get("last") or {}
            if status.get("current") is None and last.get("id") == job_id:
                if last["phase"] != "complete":
                    raise SystemExit(f"{route} failed: {last.get('error')}")
                return last, time.monotonic() - started
            running = status.get("current")
            if running and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                p = running["progress"]
                print(f"  {running['kind']} {p['fraction'] * 100:5.1f}%  {p['keys']:>10,} keys  "
                      f"{p['rate'] / 1e6:6.1f} MB/s", flush=True)  # fmt: skip
            time.sleep(0.2)


def manifest(s3: S3Server, location: str, backup_id: str) -> dict:
    import orjson

    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    key = f"{prefix}/backups/{backup_id}.json"
    return orjson.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def change_keys(cluster: LocalCluster, keys: int, every: int) -> int:
    items = [{"key": f"k{i}", "value": "c" * 100} for i in range(0, keys, every)]
    with httpx.Client(timeout=120.0) as client:
        for start in range(0, len(items), 1000):
            client.post(
                f"{cluster.urls[0]}/v1/batch", json={"put": items[start : start + 1000]}
            ).raise_for_status()
    return len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 keys, shorter anchor")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--anchor-s", type=int, default=10, help="load before the backup")
    parser.add_argument("--durability", default="periodic")
    parser.add_argument("--base-port", type=int, default=18700)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--stream-mb-per-s", type=int, default=None,
                        help="the nodes' upload throttle (default: the node's own, 4 MB/s)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.keys = min(args.keys, 100_000)
        args.anchor_s = min(args.anchor_s, 6)
    env = {"LIMEDB_DURABILITY": args.durability, "LIMEDB_LOG_LEVEL": "warning",
           "LIMEDB_REPLICATION_FACTOR": "3"}  # fmt: skip
    if args.stream_mb_per_s is not None:
        env["LIMEDB_STREAM_MB_PER_S"] = str(args.stream_mb_per_s)
    root = Path(tempfile.mkdtemp(prefix="limedb-bench-backup-"))
    s3 = start_s3_server(root / "s3")
    location = "s3://limedb-bench/backups"
    creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
    try:
        with LocalCluster(root / "source", 3, args.base_port, env) as cluster:
            print(f"preloading {args.keys:,} keys (100-byte values, RF=3) ...", flush=True)
            print(f"  {cluster.preload(args.keys, workers=4):,.0f} keys/s", flush=True)
            print(f"  compactions settled in {cluster.wait_settled():.1f} s", flush=True)
            body = {"to": location, "endpoint": s3.endpoint, "credentials": creds}
            with LoadWindows(cluster, args.connections, {"BENCH_KEYS": str(args.keys)}) as load:
                time.sleep(args.anchor_s)
                backup_started = time.monotonic()
                print("full backup under load ...", flush=True)
                full_job, backup_s = run_job(cluster.urls[0], "/admin/backup", body)
                backup_ended = time.monotonic()
                time.sleep(WINDOW_S)
            before = load.ops_s(0, backup_started)
            during = load.ops_s(backup_started, backup_ended)
            full = manifest(s3, location, full_job["backup_id"])
            changed = change_keys(cluster, args.keys, 100)
            print(f"changed {changed:,} keys; incremental backup ...", flush=True)
            incr_job, incr_s = run_job(cluster.urls[1], "/admin/backup", body)
            incremental = manifest(s3, location, incr_job["backup_id"])
        with LocalCluster(root / "target", 3, args.base_port + 10, env) as target:
            print("restoring the full backup into a fresh 3-node cluster ...", flush=True)
            restore_body = {"from": location, "backup": full_job["backup_id"],
                            "endpoint": s3.endpoint, "credentials": creds}  # fmt: skip
            restore_job, restore_s = run_job(target.urls[0], "/admin/restore", restore_body)
    finally:
        s3.stop()
        shutil.rmtree(root, ignore_errors=True)

    ratio = during / before if before else 0.0
    incr_ratio = incremental["bytes_uploaded"] / max(full["bytes_uploaded"], 1)
    restored = restore_job["progress"]["keys"]
    rows = [
        ("keys in the cluster", f"{args.keys:,} (100-byte values, RF=3)"),
        ("full backup", f"{backup_s:.1f} s: {full['bytes'] / 1e6:.1f} MB in {full['files']} "
                        f"tables ({full['bytes'] / 1e6 / backup_s:.1f} MB/s, "
                        f"{args.keys / backup_s:,.0f} keys/s)"),
        ("client ops/s before (anchor)", f"{before:,.0f}"),
        ("client ops/s during the backup", f"{during:,.0f}"),
        ("during / before", f"{ratio:.2f} (goal >= {GOAL_RATIO})"),
        ("incremental backup (1% changed)",
         f"{incr_s:.1f} s, uploaded {incremental['bytes_uploaded'] / 1e6:.2f} MB = "
         f"{incr_ratio:.3f} of the full backup's {full['bytes_uploaded'] / 1e6:.1f} MB"),
        ("restore into 3 new nodes", f"{restore_s:.1f} s: {restored:,} keys "
                                     f"({restored / restore_s:,.0f} keys/s, "
                                     f"{full['bytes'] / 1e6 / restore_s:.1f} MB/s of tables)"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not args.no_doc:
        table = "\n".join(f"| {name} | {value} |" for name, value in rows)
        intro = (
            f"`benchmarks/bench_backup.py{''.join(' ' + a for a in sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d')}: a 3-node RF=3 cluster backed up to SeaweedFS on "
            f"loopback under a constant 50/50 read/write wrk load ({args.connections} "
            f"connections); every process shares this machine's cores (durability "
            f"{args.durability})."
        )
        replace_section("backup", "## Backup\n\n" + textwrap.fill(intro, 100)
                  + "\n\n| measure | value |\n|---|---|\n" + table + "\n\n")  # fmt: skip
    print("goal met" if ratio >= GOAL_RATIO else "goal NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
