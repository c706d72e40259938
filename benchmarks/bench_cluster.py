"""Cluster benchmark: a 3-node RF=3 W=R=2 cluster under a 50/50 read/write load from wrk.

Anchors measured in the same run, on the same machine:
- the mixed load against one standalone node (no replication): cluster / single ratio;
- the goal of the cluster issue: >= 10,000 ops/s with p99 < 25 ms (ratio ops/s / 10,000);
- GET of keys a node owns itself versus the same keys forwarded by another node on an RF=1
  cluster: forwarded / local ratio (goal >= 0.6);
- the same 3-node RF=3 cluster with `--tls-mode required` (HTTPS from wrk, mutual TLS between
  the nodes): what TLS costs, as a with / without ratio of ops/s and of CPU per operation.

Every node is a real `limedb serve` process; wrk (Debian package) generates the load, one wrk
process per node with the connections split between them, 100-byte values, keys uniform over
--keys (preloaded through /v1/batch). Every measurement follows --warmup-s seconds of the same
load, not counted (the nodes' block caches fill and their peer connections open: without it the
first seconds of a fresh cluster weighed on the cluster's figure more than on one node's, e.g.
119.7 against 110.0 us of CPU per operation for the same cluster's first and second 10 s, one
node's 42.3 against 40.1). All processes share this machine's cores.

    .venv/bin/python benchmarks/bench_cluster.py [--duration 10] [--connections 48] \
        [--warmup-s 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _cluster import GET_LIST, MIXED, LocalCluster, run_wrk
from _tls import make_tls
from limedb.cluster.ring.placement import Ring

GOAL_OPS = 10_000
GOAL_P99_MS = 25.0


def _line(name: str, r: dict) -> str:
    return (
        f"{name:<38} {r['ops_s']:>9,.0f} ops/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
        f"  {r['cpu_us_per_op']:6.1f} us CPU/op  errors {r['errors']}  non-2xx {r['non2xx']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup-s", type=int, default=5, help="load not counted, before each")
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--durability", default="sync", choices=("sync", "periodic", "none"))
    parser.add_argument("--base-port", type=int, default=18484)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `bash scripts/system-deps.sh`", file=sys.stderr)
        return 2
    env = {"LIMEDB_DURABILITY": args.durability, "LIMEDB_LOG_LEVEL": "warning"}
    wrk_env = {"BENCH_KEYS": str(args.keys)}

    def measure(c: LocalCluster, urls: list[str], script: str, load_env: dict[str, str]) -> dict:
        """The load on `urls` for --duration seconds, after --warmup-s seconds not counted."""
        if args.warmup_s > 0:
            run_wrk(urls, script, args.connections, args.warmup_s, load_env, c.procs)
        return run_wrk(urls, script, args.connections, args.duration, load_env, c.procs)

    print(
        f"cluster benchmark: {args.duration}s per run, {args.connections} connections, "
        f"100-byte values, 50/50 read/write over {args.keys:,} keys, durability {args.durability}, "
        f"{os.cpu_count()} cores shared by every process; each run after {args.warmup_s}s of "
        "the same load, not counted"
    )
    print(
        "configuration: every node a `limedb serve` process with the engine's defaults (16 MiB "
        "memtable, 256 MiB block cache, bloom 10 bits/key); the anchor is one such node, RF=1, "
        f"same durability ({args.durability}), same wrk load; periodic = fsync every 50 ms"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        with LocalCluster(root / "single", 1, args.base_port, env) as single:
            single.preload(args.keys)
            anchor = measure(single, single.urls, MIXED, wrk_env)
        print(_line(f"anchor: 1 node, no replication ({args.durability})", anchor))

        cluster_env = {**env, "LIMEDB_REPLICATION_FACTOR": "3"}
        with LocalCluster(root / "rf3", 3, args.base_port + 10, cluster_env) as cluster:
            cluster.preload(args.keys)
            mixed = measure(cluster, cluster.urls, MIXED, wrk_env)
        print(_line(f"3 nodes, RF=3, W=R=2 ({args.durability})", mixed))

        tls_env = {**cluster_env, **make_tls(root / "tls")}
        with LocalCluster(root / "rf3tls", 3, args.base_port + 40, tls_env) as cluster:
            cluster.preload(args.keys)
            with_tls = measure(cluster, cluster.urls, MIXED, wrk_env)
        print(_line(f"3 nodes, RF=3, W=R=2, TLS ({args.durability})", with_tls))

        if args.durability != "periodic":
            # For reference: fsync every 50 ms instead of before each acknowledgement (with
            # three copies, as Cassandra's default commit log does).
            periodic_env = {**cluster_env, "LIMEDB_DURABILITY": "periodic"}
            with LocalCluster(root / "rf3p", 3, args.base_port + 30, periodic_env) as cluster:
                cluster.preload(args.keys)
                periodic = measure(cluster, cluster.urls, MIXED, wrk_env)
            print(_line("3 nodes, RF=3, W=R=2 (periodic)", periodic))

        rf1_env = {**env, "LIMEDB_REPLICATION_FACTOR": "1"}
        with LocalCluster(root / "rf1", 3, args.base_port + 20, rf1_env) as rf1:
            rf1.preload(args.keys)
            ring = Ring(rf1.urls, vnodes=256)
            owned = [
                f"k{i}" for i in range(args.keys) if ring.owner_url(f"k{i}".encode()) == rf1.urls[0]
            ]
            key_file = root / "owned.txt"
            key_file.write_text("\n".join(owned) + "\n")
            get_env = {"BENCH_KEY_FILE": str(key_file)}
            local = measure(rf1, rf1.urls[:1], GET_LIST, get_env)
            forwarded = measure(rf1, rf1.urls[1:2], GET_LIST, get_env)
        print(_line("GET local (RF=1, owner answers)", local))
        print(_line("GET forwarded (RF=1, via a peer)", forwarded))

    print()
    print(f"cluster / single node:        {mixed['ops_s'] / anchor['ops_s']:.2f}x")
    print(
        f"cluster / goal {GOAL_OPS:,} ops/s:   {mixed['ops_s'] / GOAL_OPS:.2f}x "
        f"(p99 {mixed['p99_ms']:.1f} ms, goal < {GOAL_P99_MS:.0f} ms)"
    )
    print(f"forwarded GET / local GET:    {forwarded['ops_s'] / local['ops_s']:.2f}x (goal >= 0.6)")
    print(
        f"TLS / plaintext, 3 nodes:     {with_tls['ops_s'] / mixed['ops_s']:.2f}x ops/s, "
        f"{with_tls['cpu_us_per_op'] / mixed['cpu_us_per_op']:.2f}x CPU per op"
    )
    print(
        f"CPU per op, cluster / single:  {mixed['cpu_us_per_op'] / anchor['cpu_us_per_op']:.2f}x; "
        f"if the nodes had both cores to themselves: ~{2e6 / mixed['cpu_us_per_op']:,.0f} ops/s"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
