"""Where the nodes' main-process CPU goes while a join streams, against the anchor before it.

bench_migration's setup (3 nodes holding `--keys` keys, a 4th joining under a constant 50/50
wrk load on the three) with every node under cProfile on a per-thread CPU clock
(profile_cluster.py's wrapper), switched on twice: for `--anchor-s` seconds of load before the
join (after the warm-up), and for the join's streaming phase. For each window it prints every
node's CPU from /proc split into its event-loop thread, its other threads and its offload
workers, per key-value request the three old owners answered (their /metrics); then the
profile's shares per category as microseconds of event-loop CPU per request, old owners (n0-n2,
n0 drives the join) summed and the joiner (n3) apart. cProfile inflates call-heavy code, so
the profiled microseconds compare between the two windows only; `--no-profile` gives the
unprofiled split, to which the shares scale.

Not part of `make bench` (run_all.py runs bench_*.py only).

    .venv/bin/python benchmarks/profile_migration.py [--keys 1000000] [--keep DIR] [--no-profile]
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import _cluster
import bench_migration
import limedb.cluster_cli
import profile_cluster
from _cluster import LocalCluster, start_node_with_env, wait_ready
from bench_migration import LoadWindows, join_and_wait
from limedb.cluster_cli import stop_all

# profile_cluster's wrapper, each window a new profile (a Profile enabled again would add to
# what it holds) dumped by SIGUSR2 into a numbered file.
WRAPPER = profile_cluster.WRAPPER.replace(
    "def start(*_):\n    prof.enable()",
    "def start(*_):\n    global prof\n    prof = cProfile.Profile(time.thread_time)\n"
    "    prof.enable()",
).replace(
    'path = os.path.join(out, f"{os.getpid()}.prof")',
    'stop.n = getattr(stop, "n", 0) + 1\n'
    '    path = os.path.join(out, f"{os.getpid()}.{stop.n}.prof")',
)
assert WRAPPER.count("global prof") == 1 and "stop.n" in WRAPPER

# Ahead of profile_cluster's categories: the transition's own modules.
EXTRA: list[tuple[str, re.Pattern[str]]] = [
    ("routing during a transition (write set, read replicas)", re.compile(
        r"cluster/transitions\.py|cluster/ring/(record|keeper|placement)\.py")),
    ("range streaming (table cut serving, fetch, ingest)", re.compile(
        r"cluster/(table_stream\w*|streaming|handed_off)\.py|storage/(ingest\w*|table_cut\w*)")),
    ("transition driver, ring record exchange", re.compile(
        r"cluster/(transition_driver|verification|verifier)\.py|cluster/ring/(exchange|store)")),
]  # fmt: skip


def main_thread_cpu(pids: list[int]) -> list[float]:
    return [profile_cluster.thread_cpu(pid, pid) for pid in pids]


def process_split(pids: list[int]) -> list[tuple[float, float, float]]:
    """Each node's CPU so far as (event-loop thread, its other threads, offload workers)."""
    tree = bench_migration.tree_cpu_by_process(pids)
    own = bench_migration.tree_cpu_by_process(pids, own=True)
    main = main_thread_cpu(pids)
    return [(m, own[p] - m, tree[p] - own[p]) for p, m in zip(pids, main, strict=True)]


def collect(out: Path, pids: list[int], n: int) -> list[pstats.Stats]:
    files = [out / f"{pid}.{n}.prof" for pid in pids]
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in files):
        if time.monotonic() > deadline:
            raise SystemExit("a node did not write its profile")
        time.sleep(0.1)
    return [pstats.Stats(str(f)) for f in files]


def per_op(stats: list[pstats.Stats], cpu: list[float], ops: float) -> dict[str, float]:
    """Microseconds of main-thread CPU per client operation by category, summed over nodes."""
    out: collections.Counter[str] = collections.Counter()
    for s, seconds in zip(stats, cpu, strict=True):
        cats = profile_cluster.categories(s)
        total = sum(cats.values()) or 1.0
        seen = min(1.0, total / seconds) if seconds > 0 else 1.0
        cats["uvloop C code (epoll, recv, dispatch) + profiler"] += total * (1 / seen - 1)
        total = sum(cats.values())
        for name, t in cats.items():
            out[name] += seconds * t / total / ops * 1e6
    return dict(out)


def top_functions(stats: list[pstats.Stats], ops: float, n: int = 25) -> dict[str, float]:
    own: collections.Counter[str] = collections.Counter()
    for s in stats:
        for func, (_cc, _nc, tt, _ct, _callers) in s.stats.items():  # type: ignore[attr-defined]
            where = re.sub(r".*/site-packages/|.*/lib/python3\.\d+/|.*/node/", "", func[0])
            own[f"{where}:{func[1]} {func[2]}"[:110]] += tt / ops * 1e6
    return dict(own.most_common(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--warmup-s", type=int, default=10)
    ap.add_argument("--anchor-s", type=int, default=8)
    ap.add_argument("--stream-mb-per-s", type=int, default=0)
    ap.add_argument("--mode", default="tables")
    ap.add_argument("--base-port", type=int, default=18700)
    ap.add_argument("--keep", default=None, help="copy the nodes' .prof files into this folder")
    ap.add_argument(
        "--no-profile",
        action="store_true",
        help="only the CPU split per request (requests counted from the nodes' /metrics)",
    )
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    limedb.cluster_cli.serve_command = lambda: [sys.executable, "-c", WRAPPER, "serve"]
    assert _cluster.start_node is limedb.cluster_cli.start_node
    root = Path(tempfile.mkdtemp(prefix="profile-migration-"))
    out = root / "prof"
    out.mkdir()
    env = {
        "LIMEDB_DURABILITY": "periodic",
        "LIMEDB_LOG_LEVEL": "warning",
        "LIMEDB_REPLICATION_FACTOR": "3",
        "LIMEDB_STREAM_MODE": args.mode,
        "LIMEDB_STREAM_MB_PER_S": str(args.stream_mb_per_s),
        "PROFILE_CLUSTER_DIR": str(out),
    }
    joiner = None
    windows: dict[str, tuple[float, float, list[float]]] = {}
    splits: dict[str, list] = {}
    served: dict[str, dict[str, float]] = {}
    profiled = not args.no_profile
    try:
        with LocalCluster(root, 3, args.base_port, env) as cluster:
            print(f"preloading {args.keys:,} keys ...", flush=True)
            cluster.preload(args.keys, workers=4)
            cluster.wait_settled()
            url = f"http://127.0.0.1:{args.base_port + 3}"
            joiner = start_node_with_env(
                url,
                args.base_port + 3,
                root / "n3",
                cluster.urls,
                {**env, "LIMEDB_AWAIT_JOIN": "true"},
            )
            wait_ready(url, timeout_s=120.0)
            pids = [p.pid for p in cluster.procs] + [joiner.pid]

            def start(name: str) -> None:
                served[name] = bench_migration.served(cluster.urls)
                for pid in pids if profiled else ():
                    os.kill(pid, signal.SIGUSR1)
                windows[name] = (time.monotonic(), 0.0, main_thread_cpu(pids))
                splits[name] = process_split(pids)

            def stop(name: str) -> None:
                for pid in pids if profiled else ():
                    os.kill(pid, signal.SIGUSR2)
                after = bench_migration.served(cluster.urls)
                served[name] = {k: after[k] - served[name].get(k, 0.0) for k in after}
                began, _, cpu0 = windows[name]
                cpu = [b - a for a, b in zip(cpu0, main_thread_cpu(pids), strict=True)]
                windows[name] = (began, time.monotonic(), cpu)
                splits[name] = [
                    tuple(b - a for a, b in zip(x, y, strict=True))
                    for x, y in zip(splits[name], process_split(pids), strict=True)
                ]

            def sample(phase: str) -> None:
                if phase == "streaming" and "streaming" not in windows:
                    start("streaming")
                elif phase != "streaming" and windows.get("streaming", (0, 1.0))[1] == 0.0:
                    stop("streaming")

            with LoadWindows(cluster, args.connections, {"BENCH_KEYS": str(args.keys)}) as load:
                time.sleep(args.warmup_s)
                start("anchor")
                time.sleep(args.anchor_s)
                stop("anchor")
                print("joining under load ...", flush=True)
                join_and_wait(cluster.urls[0], url, sample)
                if windows["streaming"][1] == 0.0:
                    stop("streaming")
            results = {}
            for n, name in enumerate(("anchor", "streaming"), start=1):
                began, ended, cpu = windows[name]
                stats = collect(out, pids, n) if profiled else []
                ops = int(sum(served[name].values()))
                wrk = load.ops_s(began, ended)
                results[name] = (ops / (ended - began), cpu, ops, stats)
                print(
                    f"{name}: {ended - began:.1f} s, {ops:,} HTTP requests at the old owners "
                    f"({ops / (ended - began):,.0f}/s; wrk windows {wrk:,.0f} ops/s); CPU "
                    "(event loop / other threads / workers): "
                    + "  ".join(
                        f"n{i} {a:.1f}/{b:.1f}/{c:.1f}s" for i, (a, b, c) in enumerate(splits[name])
                    )
                    + "; old owners per request: "
                    + " / ".join(
                        f"{sum(x[k] for x in splits[name][:3]) / max(ops, 1) * 1e6:.0f}"
                        for k in range(3)
                    )
                    + " us",
                    flush=True,
                )
    finally:
        if joiner is not None:
            stop_all([joiner])
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nload average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    if not profiled:
        return 0
    cats: dict[str, dict[str, float]] = {}
    for name, (ops_s, cpu, ops, stats) in results.items():
        print(
            f"{name}: {ops_s:,.0f} client ops/s (profiled); main-thread CPU per node "
            + " ".join(f"n{i} {c:.1f}s" for i, c in enumerate(cpu))
            + f"; per op: old owners {sum(cpu[:3]) / ops * 1e6:.0f} us, "
            f"joiner {cpu[3] / ops * 1e6:.0f} us"
        )
        cats[f"{name} old"] = per_op(stats[:3], cpu[:3], ops)
        cats[f"{name} joiner"] = per_op(stats[3:], cpu[3:], ops)
    print("\nus of main-thread CPU per client op: old owners (n0-n2 summed) anchor -> streaming;")
    print("joiner n3 anchor -> streaming")
    names = sorted(set().union(*cats.values()), key=lambda c: -cats["streaming old"].get(c, 0.0))
    for c in names:
        a, b = cats["anchor old"].get(c, 0.0), cats["streaming old"].get(c, 0.0)
        ja, jb = cats["anchor joiner"].get(c, 0.0), cats["streaming joiner"].get(c, 0.0)
        print(f"  {c:<56} {a:6.1f} -> {b:6.1f} ({b - a:+6.1f})   n3 {ja:5.1f} -> {jb:5.1f}")
    for name in ("anchor", "streaming"):
        _, _, ops, stats = results[name]
        print(f"\nold owners' functions with the most own time, {name} (us per client op):")
        for f, us in top_functions(stats[:3], ops).items():
            print(f"  {us:6.1f}  {f}")
    return 0


if __name__ == "__main__":
    profile_cluster.CATEGORIES[:0] = EXTRA
    raise SystemExit(main())
