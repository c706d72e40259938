"""Where a node's CPU goes: one standalone node against a 3-node RF=3 cluster, same load.

The same 50/50 wrk load as bench_cluster.py (sync durability by default). Every node runs
under cProfile with a per-thread CPU clock (`time.thread_time`) as its timer, switched on
only while wrk runs (SIGUSR1 / SIGUSR2), so time a thread spends waiting for a core on a busy
machine is not counted. cProfile sees the event-loop thread (everything a request does in
Python, and the C code of uvloop it runs in); the WAL syncer and flush threads are counted
from /proc as "other threads". Each function's own time goes to a category by its module; a
C function (a socket write, fdatasync, a dict lookup) goes to its callers' categories in the
proportion they called it, socket writes and fsyncs to categories of their own. Shares are
turned into microseconds per operation with the CPU time per operation of an unprofiled wrk
run on the same nodes just before, so cProfile's own overhead does not inflate them.

Not part of `make bench` (run_all.py runs bench_*.py only).

    .venv/bin/python benchmarks/profile_cluster.py [--duration 10] [--keys 100000]
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
import limedb.cluster_cli
from _cluster import MIXED, LocalCluster, run_wrk

# Runs `limedb serve` with a cProfile switched on by SIGUSR1 and dumped by SIGUSR2.
WRAPPER = """
import cProfile, os, signal, sys, time
out = os.environ["PROFILE_CLUSTER_DIR"]
prof = cProfile.Profile(time.thread_time)
def start(*_):
    prof.enable()
def stop(*_):
    prof.disable()
    path = os.path.join(out, f"{os.getpid()}.prof")
    prof.dump_stats(path + ".tmp")
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from limedb.cli import main
sys.argv[0] = "limedb"
main()
"""

CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("storage: write path, WAL, memtable", re.compile(
        r"storage/(write_path|group_commit|wal|memtable|batch|record|fs)\.py")),
    ("storage: read path", re.compile(
        r"storage/(engine|snapshot|sstable|block_cache|bloom|engine_filter)\.py")),
    ("storage: flush and compaction", re.compile(
        r"storage/(flush|compactor|compaction|offload|version_set|manifest|purge)\.py")),
    ("internal RPC (framing)", re.compile(r"cluster/rpc\.py")),
    ("replica side of RPC", re.compile(r"cluster/replica\.py")),
    ("quorum coordination, ring lookup", re.compile(
        r"cluster/(coordinator|hints|deadline|keys|node)\.py|cluster/ring/")),
    ("gossip, failure detection, repair", re.compile(
        r"cluster/(gossip|failure|membership|repair|merkle|clock_offset|background|status)\.py")),
    ("single-node service", re.compile(r"cluster/local\.py")),
    ("HTTP (parser callbacks, routes)", re.compile(
        r"limedb/api/|httptools|uvicorn|h11|starlette|fastapi")),
    ("HLC timestamps", re.compile(r"limedb/hlc\.py")),
    ("event loop in Python (asyncio, futures)", re.compile(r"asyncio|threading")),
]  # fmt: skip
SOCKET_WRITE = re.compile(r"'(write|writelines|send|sendall|sendmsg)' of '(uvloop|_socket)")
FSYNC = re.compile(r"fdatasync|fsync")
UVLOOP = re.compile(r"of 'uvloop\.")


def module_category(func: tuple) -> str:
    where = f"{func[0]}"
    for name, pattern in CATEGORIES:
        if pattern.search(where):
            return name
    return "other Python"


def categories(stats: pstats.Stats) -> collections.Counter[str]:
    """Seconds of own time per category (C functions split over their callers)."""
    out: collections.Counter[str] = collections.Counter()
    for func, (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func[0] != "~":
            out[module_category(func)] += tt
            continue
        name = func[2]
        if FSYNC.search(name):
            out["fsync in the event-loop thread"] += tt
            continue
        if not callers:  # called from C: uvloop's own loop (epoll, recv, callbacks)
            out["uvloop C code (epoll, recv, dispatch)"] += tt
            continue
        total = sum(c[2] for c in callers.values()) or 1.0
        for caller, c in callers.items():
            share = tt * c[2] / total
            if SOCKET_WRITE.search(name):
                out[f"socket write, from {module_category(caller)}"] += share
            elif UVLOOP.search(name) and "run_forever" in name:
                out["uvloop C code (epoll, recv, dispatch)"] += share
            else:
                out[module_category(caller)] += share
    return out


def thread_cpu(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cluster: LocalCluster, args, out: Path) -> tuple[dict, float, float, pstats.Stats]:  # noqa: ANN001, E501
    """An unprofiled wrk run (CPU per op, main-thread CPU per op), then a profiled one; also
    the event-loop threads' CPU seconds during the profiled run (and, in the first result,
    how many requests the profiled run made: "profiled_requests")."""
    env = {"BENCH_KEYS": str(args.keys)}
    pids = [p.pid for p in cluster.procs]
    main_before = sum(thread_cpu(pid, pid) for pid in pids)
    plain = run_wrk(cluster.urls, MIXED, args.connections, args.duration, env, cluster.procs)
    main_per_op = (sum(thread_cpu(p, p) for p in pids) - main_before) / plain["requests"] * 1e6
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    profiled_before = sum(thread_cpu(pid, pid) for pid in pids)
    profiled = run_wrk(cluster.urls, MIXED, args.connections, args.duration, env, cluster.procs)
    plain["profiled_requests"] = profiled["requests"]
    profiled_main = sum(thread_cpu(pid, pid) for pid in pids) - profiled_before
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    files = [out / f"{pid}.prof" for pid in pids]
    deadline = time.monotonic() + 60
    while not all(f.exists() for f in files):  # each node writes its file when it gets there
        if time.monotonic() > deadline:
            raise SystemExit("a node did not write its profile")
        time.sleep(0.1)
    return plain, main_per_op, profiled_main, pstats.Stats(*map(str, files))


def report(name: str, plain: dict, main_per_op: float, profiled_main: float, stats) -> dict:  # noqa: ANN001
    per_op = plain["cpu_us_per_op"]
    cats = categories(stats)
    total = sum(cats.values()) or 1.0
    # cProfile sees Python functions and the C functions they call; uvloop's own C code between
    # callbacks (epoll, recv, libuv) runs under no profiled frame. Its share is what the thread
    # used beyond what the profile accounts for (an upper bound: cProfile's overhead is in it).
    seen = min(1.0, total / profiled_main) if profiled_main > 0 else 1.0
    cats["uvloop C code (epoll, recv, dispatch) + profiler"] = total * (1 / seen - 1)
    total = sum(cats.values())
    print(
        f"\n{name}: {plain['ops_s']:,.0f} ops/s, p99 {plain['p99_ms']:.1f} ms, {per_op:.1f} us "
        f"of node CPU per operation, of which {main_per_op:.1f} us in the event-loop thread"
    )
    out = {}
    for category, seconds in cats.most_common():
        out[category] = main_per_op * seconds / total
        print(f"  {category:<52} {100 * seconds / total:5.1f}%  {out[category]:6.1f} us/op")
    out["other threads (WAL syncer, flusher, offload)"] = per_op - main_per_op
    print(f"  {'other threads (WAL syncer, flusher), from /proc':<52}        "
          f"{per_op - main_per_op:6.1f} us/op")  # fmt: skip
    # Calls per operation depend far less on the machine's load than microseconds do: the
    # measure that shows a change too small for the CPU figures' noise.
    ops = max(plain["profiled_requests"], 1)
    calls = [(func[0] == "~", nc) for func, (_cc, nc, *_rest) in stats.stats.items()]  # type: ignore[attr-defined]
    c_calls = sum(nc for builtin, nc in calls if builtin)
    py_calls = sum(nc for builtin, nc in calls if not builtin)
    print(
        f"  calls per operation: {(py_calls + c_calls) / ops:.1f} "
        f"(Python {py_calls / ops:.1f}, C {c_calls / ops:.1f}; {ops:,} profiled requests)"
    )
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]  # type: ignore[attr-defined]
    print("  functions with the most own time:")
    for func, (_cc, nc, tt, _ct, _callers) in top:
        where = re.sub(r".*/site-packages/|.*/lib/python3\.\d+/|.*/node/", "", func[0])
        print(f"    {100 * tt / total:5.1f}%  {nc:>9,} calls  {where}:{func[1]} {func[2]}"[:150])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--durability", default="sync", choices=("sync", "periodic", "none"))
    ap.add_argument("--base-port", type=int, default=18684)
    ap.add_argument("--keep", default=None, help="copy the nodes' .prof files into this folder")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: run `bash scripts/system-deps.sh`")
        return 2
    print(
        f"profile: {args.duration}s of 50/50 read/write over {args.keys:,} keys, "
        f"{args.connections} connections, durability {args.durability}, "
        f"{os.cpu_count()} cores shared by every process (load average "
        f"{os.getloadavg()[0]:.1f} at the start)"
    )
    # Every node started by _cluster runs under the profiling wrapper.
    limedb.cluster_cli.serve_command = lambda: [sys.executable, "-c", WRAPPER, "serve"]
    assert _cluster.start_node is limedb.cluster_cli.start_node
    figures = {}
    with tempfile.TemporaryDirectory(prefix="profile-cluster-") as tmp:
        root = Path(tmp)
        for name, nodes, rf, port in (
            ("single node, no replication", 1, 1, args.base_port),
            ("3 nodes, RF=3, W=R=2", 3, 3, args.base_port + 10),
        ):
            out = root / f"prof{nodes}"
            out.mkdir()
            env = {
                "LIMEDB_DURABILITY": args.durability,
                "LIMEDB_LOG_LEVEL": "warning",
                "LIMEDB_REPLICATION_FACTOR": str(rf),
                "PROFILE_CLUSTER_DIR": str(out),
            }
            with LocalCluster(root / f"n{nodes}", nodes, port, env) as cluster:
                cluster.preload(args.keys)
                cluster.wait_settled()
                plain, main_per_op, profiled_main, stats = measure(cluster, args, out)
            figures[name] = report(name, plain, main_per_op, profiled_main, stats)
            if args.keep:
                shutil.copytree(out, Path(args.keep) / f"nodes{nodes}", dirs_exist_ok=True)
    single, three = figures.values()
    print("\nper category, single node -> 3-node cluster (us of node CPU per operation):")
    for category in sorted(set(single) | set(three), key=lambda c: -three.get(c, 0.0)):
        a, b = single.get(category, 0.0), three.get(category, 0.0)
        print(f"  {category:<52} {a:6.1f} -> {b:6.1f}  ({b - a:+6.1f})")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
