"""Peers benchmark: the same 3-node work against LimeDB, Cassandra and Redis Cluster, one after
another in one run, with LimeDB / peer ratios (issue 18).

The work, for every system: 3 nodes (Redis: 3 masters, each with a replica), every key on all
three (RF=3; Redis: master + replica), 50/50 read/write over --keys keys chosen uniformly,
100-byte values, --connections requests in flight (closed loop), all keys preloaded first.
- LimeDB: 3 `limedb serve` nodes, RF=3, W=R=2, durability `sync` (fsync before the
  acknowledgement) and `periodic` (fsync every 50 ms); load from wrk (C), one process per node,
  as bench_cluster.py.
- Cassandra: cassandra-all from Maven Central (scripts/peers.sh), 3 JVMs on 127.0.0.1-3, one
  token each, keyspace RF=3 (SimpleStrategy), QUORUM reads and writes, commitlog_sync `batch`
  (fsync before the acknowledgement) and `periodic` (every 10 s), measured after a warm-up.
  Load (token-aware, prepared statements) from both the Java driver cassandra-all ships with
  (tools/cassandra/CassandraLoad.java, its own JVM) and the Python cassandra-driver (this
  process) on the batch cluster; the one with less client CPU per op is used for the ratios
  and for the periodic cluster.
- Redis Cluster: Debian's redis-server, 3 masters + 3 replicas, AOF with `appendfsync always` and
  `everysec`; replication is asynchronous, so a third row per mode adds `WAIT 1 1000` after each
  SET (acknowledged once a replica has it). Load from this benchmark's own RESP client
  (peer_redis.py: asyncio + hiredis, slot-aware, one round trip per request).
  redis-benchmark --cluster is not used: it runs SET then GET, not a mix, and hash-tags keys
  per node.
Server CPU per operation is the server processes' utime + stime (/proc/PID/stat) over the
measurement divided by the operations answered; the load generator is another process (wrk) or
this one, and is never counted as server CPU (its own CPU is printed beside, where measured).
A peer that cannot be fetched or started is skipped with the reason; the exit code stays 0.

    .venv/bin/python benchmarks/bench_peers.py [--duration 10] [--cassandra-warmup 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peer_cassandra
import peer_redis
from _cluster import MIXED, LocalCluster, run_wrk
from peer_load import LoadResult, measure

ROOT = Path(__file__).resolve().parents[1]


def _row(system: str, config: str, r: LoadResult) -> dict:
    return {"system": system, "config": config, **r.__dict__}


def _print_row(row: dict) -> None:
    client = row["client_cpu_us_per_op"]
    client_text = f"{client:7.1f}" if client == client else "    n/a"
    print(
        f"{row['system']:<10} {row['config']:<34} {row['ops_s']:>9,.0f} ops/s"
        f"  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms"
        f"  server {row['server_cpu_us_per_op']:7.1f} us/op  client {client_text} us/op"
        f"  errors {row['errors']}  load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def run_limedb(args: argparse.Namespace, root: Path, durability: str, port: int) -> dict:
    env = {
        "LIMEDB_DURABILITY": durability,
        "LIMEDB_LOG_LEVEL": "warning",
        "LIMEDB_REPLICATION_FACTOR": "3",
    }
    with LocalCluster(root / f"lime-{durability}", 3, port, env) as cluster:
        cluster.preload(args.keys)
        cluster.wait_settled()
        r = run_wrk(
            cluster.urls,
            MIXED,
            args.connections,
            args.duration,
            {"BENCH_KEYS": str(args.keys)},
            cluster.procs,
        )
    result = LoadResult(
        ops_s=r["ops_s"],
        p50_ms=r["p50_ms"],
        p99_ms=r["p99_ms"],
        errors=r["errors"] + r["non2xx"],
        requests=r["requests"],
        server_cpu_us_per_op=r["cpu_us_per_op"],
        client_cpu_us_per_op=float("nan"),  # wrk's, not measured
    )
    return _row("LimeDB", f"RF=3 W=R=2 {durability}", result)


def run_redis(args: argparse.Namespace, root: Path, appendfsync: str, port: int) -> list[dict]:
    rows = []
    with peer_redis.RedisCluster(root / f"redis-{appendfsync}", port, appendfsync) as cluster:
        for wait in (False, True):
            load = peer_redis.RedisLoad(cluster, wait_replicas=wait)
            load.preload(args.keys)
            measure(load.run(args.connections, args.keys), args.redis_warmup, cluster.pids)
            r = measure(load.run(args.connections, args.keys), args.duration, cluster.pids)
            label = f"appendfsync {appendfsync}" + (", WAIT 1" if wait else ", async repl.")
            rows.append(_row("Redis", label, r))
            _print_row(rows[-1])
    return rows


def run_cassandra(
    args: argparse.Namespace, root: Path, folder: Path, sync: str, clients: list[str]
) -> dict[str, dict]:
    """One cluster with `sync` commit log: Java-driver preload, a warm-up of the same mix, then
    one measured window per client in `clients` ("java", "python"), returned by client."""
    lib = folder / "lib"
    started = time.monotonic()
    rows = {}
    with peer_cassandra.CassandraCluster(lib, root / f"cassandra-{sync}", 3, sync) as cluster:
        print(f"  cassandra ({sync}) up in {time.monotonic() - started:.0f} s", flush=True)
        java = peer_cassandra.JavaLoad(cluster, folder)
        started = time.monotonic()
        java.preload(args.keys)
        print(f"  preloaded {args.keys:,} keys in {time.monotonic() - started:.0f} s", flush=True)
        # The warm-up runs in the generator's own process before its measured window, so the
        # Java client's JIT is warm too; the Python client then finds the servers warm.
        for client in clients:
            if client == "java":
                r = java.measure(args.connections, args.keys, args.cassandra_warmup, args.duration)
            else:
                load = peer_cassandra.PythonLoad(cluster)
                try:
                    if clients == ["python"]:
                        measure(load.run(args.connections, args.keys), args.cassandra_warmup, [])
                    r = measure(load.run(args.connections, args.keys), args.duration, cluster.pids)
                finally:
                    load.close()
            rows[client] = _row("Cassandra", f"RF=3 QUORUM commitlog {sync}, {client} driver", r)
            _print_row(rows[client])
    return rows


def _java_version() -> str:
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return out.split('"')[1] if '"' in out else "unknown"


def _driver_version() -> str:
    import cassandra

    return cassandra.__version__


def _ratio(lime: dict | None, peer: dict | None) -> str:
    if lime is None or peer is None:
        return "n/a (not measured)"
    return (
        f"{lime['ops_s'] / peer['ops_s']:.2f}x ops/s, "
        f"{lime['server_cpu_us_per_op'] / peer['server_cpu_us_per_op']:.2f}x server CPU per op"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=48, help="requests in flight")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--cassandra-warmup", type=float, default=60.0, help="seconds")
    parser.add_argument("--redis-warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--base-port", type=int, default=18600)
    parser.add_argument(
        "--systems", default="limedb,cassandra,redis", help="comma-separated subset to run"
    )
    args = parser.parse_args()
    systems = set(args.systems.split(","))
    print(
        f"peers benchmark: {args.duration:.0f} s per measurement, {args.connections} in flight, "
        f"50/50 read/write over {args.keys:,} keys, 100-byte values, 3 nodes, every key on 3 "
        f"(Redis: master + replica); {os.cpu_count()} cores shared by servers and load generators",
        flush=True,
    )
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        root = Path(tmp)
        if "limedb" in systems:
            if shutil.which("wrk") is None:
                print("LimeDB skipped: wrk is not installed (scripts/system-deps.sh)")
            else:
                for i, durability in enumerate(("sync", "periodic")):
                    rows[f"lime-{durability}"] = run_limedb(
                        args, root, durability, args.base_port + 10 * i
                    )
                    _print_row(rows[f"lime-{durability}"])
        if "cassandra" in systems:
            try:
                folder = peer_cassandra.fetch(ROOT)
                print(
                    f"Cassandra {peer_cassandra.version(folder / 'lib')} (cassandra-all + deps "
                    f"from Maven Central, .cache/peers), JDK {_java_version()}, JVM heap "
                    f"{peer_cassandra.HEAP} per node, one token per node; clients: Java driver "
                    f"3.12 (tools/cassandra/CassandraLoad.java, its own JVM) and Python "
                    f"cassandra-driver {_driver_version()} (libev, in this process); warm-up "
                    f"{args.cassandra_warmup:.0f} s of the same mix after the preload",
                    flush=True,
                )
                batch = run_cassandra(args, root, folder, "batch", ["java", "python"])
                # The headline uses whichever driver cost the client less CPU per operation.
                client = min(batch, key=lambda c: batch[c]["client_cpu_us_per_op"])
                print(f"  client with less CPU per op: {client} driver (used for the ratios)")
                rows["cassandra-batch"] = batch[client]
                try:
                    periodic = run_cassandra(args, root, folder, "periodic", [client])
                    rows["cassandra-periodic"] = periodic[client]
                except Exception as exc:
                    print(f"Cassandra periodic skipped: {exc}", flush=True)
            except Exception as exc:  # a peer that cannot run is skipped, with the reason
                print(f"Cassandra skipped: {exc}", flush=True)
        if "redis" in systems:
            if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
                print("Redis skipped: redis-server / redis-cli not installed (system-deps.sh)")
            else:
                try:
                    print(
                        f"Redis {peer_redis.version()} (Debian redis-server), 3 masters + 3 "
                        "replicas, AOF on, no RDB, client: own asyncio+hiredis RESP generator",
                        flush=True,
                    )
                    for i, fsync in enumerate(("always", "everysec")):
                        redis_rows = run_redis(args, root, fsync, args.base_port + 100 + 10 * i)
                        rows[f"redis-{fsync}"], rows[f"redis-{fsync}-wait"] = redis_rows
                except Exception as exc:
                    print(f"Redis skipped: {exc}", flush=True)

    print()
    print("LimeDB / peer (ops/s ratio > 1: LimeDB faster; CPU ratio < 1: LimeDB cheaper):")
    pairs = [
        ("sync", "cassandra-batch", "Cassandra batch commitlog"),
        ("sync", "redis-always", "Redis appendfsync always, async replication"),
        ("sync", "redis-always-wait", "Redis appendfsync always + WAIT 1"),
        ("periodic", "cassandra-periodic", "Cassandra periodic commitlog"),
        ("periodic", "redis-everysec", "Redis everysec, async replication"),
        ("periodic", "redis-everysec-wait", "Redis everysec + WAIT 1"),
    ]
    for mode, peer, label in pairs:
        print(
            f"  LimeDB {mode:<8} / {label:<45} {_ratio(rows.get(f'lime-{mode}'), rows.get(peer))}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
