"""A/B of two (or more) code trees: one cluster per tree, all up at once, wrk rounds alternating.

What session 7 and session 9 of issue 18 measured each change with: a change's effect on the
node CPU per operation is a few percent, the machine's load moves a single run's figure by
+-15%, so both sides run in the same minutes, round after round, in alternating order. Every
side is a set of real `limedb serve` processes whose PYTHONPATH points at its tree's `node/`
folder (checked before anything starts: the tree's `limedb` must be the one imported), with
the 50/50 read/write load of bench_cluster.py (or GET only). Prints each round, then each
side's median ops/s and CPU per operation and its ratio to the first side.

Not part of `make bench` (run_all.py runs bench_*.py only).

    .venv/bin/python benchmarks/ab_cluster.py --side main=/work/main/node --side mine=node \
        [--nodes 3] [--rf 3] [--rounds 6] [--duration 3] [--keys 20000] [--get | --idle]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cluster import GET_LIST, MIXED, LocalCluster, cpu_seconds, run_wrk


def _imported_from(tree: Path) -> Path:
    """Where a process with PYTHONPATH=`tree` imports limedb from."""
    out = subprocess.run(
        [sys.executable, "-c", "import limedb; print(limedb.__file__)"],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).resolve()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", action="append", required=True, help="NAME=path/to/node")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=3, help="seconds per round and side")
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--durability", default="sync", choices=("sync", "periodic", "none"))
    ap.add_argument("--get", action="store_true", help="GET only (of preloaded keys)")
    ap.add_argument("--base-port", type=int, default=19400)
    ap.add_argument(
        "--idle",
        action="store_true",
        help="no load: each round measures the idle cluster's node CPU per second (gossip, "
        "failure detection, clock probes, timers) for --duration seconds",
    )
    args = ap.parse_args()
    sides = []
    for spec in args.side:
        name, _, path = spec.partition("=")
        tree = Path(path).resolve()
        found = _imported_from(tree)
        if not found.is_relative_to(tree):
            raise SystemExit(f"{name}: PYTHONPATH={tree} imports limedb from {found}")
        sides.append((name, tree))
    print(
        f"A/B: {args.nodes} node(s), RF={args.rf}, durability {args.durability}, "
        f"{'idle' if args.idle else 'GET' if args.get else '50/50 read/write'} over "
        f"{args.keys:,} keys, "
        f"{args.connections} connections, {args.rounds} rounds of {args.duration} s per side; "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    env = {
        "LIMEDB_DURABILITY": args.durability,
        "LIMEDB_LOG_LEVEL": "warning",
        "LIMEDB_REPLICATION_FACTOR": str(args.rf),
    }
    results: dict[str, list[dict]] = {name: [] for name, _ in sides}
    with tempfile.TemporaryDirectory(prefix="ab-cluster-") as tmp:
        root = Path(tmp)
        keyfile = root / "keys.txt"
        keyfile.write_text("".join(f"k{i}\n" for i in range(args.keys)))
        wrk_env = {"BENCH_KEYS": str(args.keys), "BENCH_KEY_FILE": str(keyfile)}
        clusters: dict[str, LocalCluster] = {}
        try:
            for i, (name, tree) in enumerate(sides):
                port = args.base_port + 20 * i
                cluster = LocalCluster(
                    root / name, args.nodes, port, {**env, "PYTHONPATH": str(tree)}
                )
                clusters[name] = cluster.__enter__()
                cluster.preload(args.keys)
            for name in clusters:
                clusters[name].wait_settled()
            for r in range(args.rounds):
                for name, _ in sides if r % 2 == 0 else sides[::-1]:
                    c = clusters[name]
                    if args.idle:
                        results[name].append(_idle(c, args.duration))
                        print(
                            f"round {r} {name:<12} idle: {results[name][-1]['cpu_ms_s']:6.2f} "
                            f"ms of node CPU per second  load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                        continue
                    script = GET_LIST if args.get else MIXED
                    x = run_wrk(c.urls, script, args.connections, args.duration, wrk_env, c.procs)
                    results[name].append(x)
                    print(
                        f"round {r} {name:<12} {x['ops_s']:>8,.0f} ops/s  p99 {x['p99_ms']:6.1f} "
                        f"ms  {x['cpu_us_per_op']:6.1f} us/op  errors {x['errors']}  non-2xx "
                        f"{x['non2xx']}  load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            for cluster in clusters.values():
                cluster.__exit__(None, None, None)
    first = None
    for name, _ in sides:
        if args.idle:
            cpu = statistics.median(x["cpu_ms_s"] for x in results[name])
            first = first or cpu
            print(
                f"median {name:<12} idle {cpu:6.2f} ms of node CPU per second ({cpu / first:.2f}x)"
            )
            continue
        cpu = statistics.median(x["cpu_us_per_op"] for x in results[name])
        ops = statistics.median(x["ops_s"] for x in results[name])
        first = first or cpu
        print(f"median {name:<12} {ops:>8,.0f} ops/s  {cpu:6.1f} us/op  ({cpu / first:.2f}x)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def _idle(cluster: LocalCluster, seconds: int) -> dict:
    """The node CPU (all of the cluster's processes) per second of doing nothing."""
    before = cpu_seconds(cluster.procs)
    started = time.monotonic()
    time.sleep(seconds)
    used = cpu_seconds(cluster.procs) - before
    return {"cpu_ms_s": used * 1000 / (time.monotonic() - started)}


if __name__ == "__main__":
    raise SystemExit(main())
