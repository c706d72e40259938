"""Migration benchmark: join a 4th node to a 3-node RF=3 cluster holding 1,000,000 keys
(100-byte values) while wrk keeps a constant 50/50 read/write load on the three nodes.

The join runs once per streaming mode (`--modes tables,keys`: ranges cut into SSTables and
ingested, and key-by-key streaming, each on a fresh cluster), printed side by side: the
migration time, keys and bytes streamed, the client throughput before the join (the anchor,
measured in the same run on the same machine, after a warm-up whose windows it leaves out) and during it with the ratio during / before
(goal >= 0.7; goal for the migration itself: <= 10 s), and the CPU the four node processes
(their offload workers included) used during the migration, per MB streamed. The figures are
written into the "Migration" section of docs/benchmarks.md.

Both modes run at one stream throttle, 13 MB/s unless `--stream-mb-per-s` says otherwise (`0`
unlimited, `node` the node's own default of 4 MB/s): the rate at which the join meets both goals
in most runs on this project's 2-core machine. "Node CPU per MB" counts the client requests
the nodes served meanwhile; the migration's own CPU charges every request served during it the
anchor's CPU per request and leaves the rest (streaming, ingest, the double writes' extra).

    .venv/bin/python benchmarks/bench_migration.py [--keys 1000000] [--quick] [--modes tables,keys]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from _cluster import (
    MIXED,
    SECRET_HEADERS,
    LocalCluster,
    run_wrk,
    start_node_with_env,
    wait_ready,
)
from _doc import replace_section
from limedb.cluster_cli import stop_all
from limedb.config import default

GOAL_S = 10.0
GOAL_RATIO = 0.7
# The throttle this benchmark sets unless told otherwise: on this project's 2-core machine the
# rate at which a join of 1,000,000 keys meets both goals in most runs (docs/benchmarks.md,
# Migration: sessions 15-16). The node's own default (4 MB/s) is kinder to clients and takes
# ~25 s here; `--stream-mb-per-s node` measures it.
BENCH_MB_PER_S = 13
NODE_MB_PER_S = default("stream_mb_per_s")
WINDOW_S = 2
# (time goal met, ratio goal met) -> what the run says
VERDICTS = {
    (True, True): "both met",
    (True, False): "time met",
    (False, True): "ratio met",
    (False, False): "neither met",
}


class LoadWindows:
    """wrk in back-to-back windows of WINDOW_S seconds until stopped, each window timed."""

    def __init__(self, cluster: LocalCluster, connections: int, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.connections = connections
        self.env = env
        self.windows: list[tuple[float, float, dict]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while self.connections <= 0 and not self._stop.wait(WINDOW_S):
                pass  # no client load: the migration's own CPU
            while not self._stop.is_set():
                start = time.monotonic()
                result = run_wrk(
                    self.cluster.urls,
                    MIXED,
                    self.connections,
                    WINDOW_S,
                    self.env,
                    self.cluster.procs,
                )
                self.windows.append((start, time.monotonic(), result))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def __enter__(self) -> LoadWindows:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise SystemExit(f"the client load failed: {self.error!r}")

    def ops_s(self, since: float, until: float) -> float:
        inside = [r for s, e, r in self.windows if s >= since and e <= until]
        if not inside:  # a migration shorter than a window: take the overlapping ones
            inside = [r for s, e, r in self.windows if e > since and s < until]
        return sum(r["ops_s"] for r in inside) / max(len(inside), 1)


def join_and_wait(
    seed: str, node_url: str, sample: Callable[[str], None] = lambda phase: None
) -> tuple[dict, float]:
    """Join `node_url` through `seed`; returns the finished transition and its duration.
    `sample(phase)` is called at every poll with the running transition's phase."""
    with httpx.Client(timeout=30.0, headers=SECRET_HEADERS) as client:
        started = time.monotonic()
        response = client.post(f"{seed}/admin/join", json={"node_url": node_url})
        if response.status_code != 202:
            raise SystemExit(f"join refused: {response.status_code} {response.text}")
        tid = response.json()["transition"]["id"]
        last_print = 0.0
        while True:
            status = client.get(f"{seed}/admin/status").json()
            last = status.get("last_transition") or {}
            if last.get("id") == tid and last["phase"] in ("done", "rolled_back"):
                if last["phase"] != "done":
                    raise SystemExit(f"migration rolled back: {last.get('reason')}")
                return last, time.monotonic() - started
            running = status.get("transition")
            sample(running["phase"] if running else "done")
            if running and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(
                    f"  {running['phase']:<9} {running['fraction'] * 100:5.1f}%  "
                    f"{running['keys_streamed']:>9,} keys  {running['rate'] / 1e6:6.1f} MB/s",
                    flush=True,
                )
            time.sleep(0.2)


KV_REQUESTS = re.compile(
    r'^limedb_http_requests_total\{method="(?:GET|PUT)",route="([^"]*)",status="(\d+)"\} (\S+)$',
    re.M,
)


def served(urls: list[str]) -> dict[str, float]:
    """Key-value requests the nodes answered so far (their /metrics), by status: the client
    load as the servers count it, a check on the wrk windows' average (which weighs every
    window alike and leaves out the gaps between windows)."""
    out: dict[str, float] = {}
    for url in urls:
        text = httpx.get(f"{url}/metrics", headers=SECRET_HEADERS, timeout=10.0).text
        for route, status, count in KV_REQUESTS.findall(text):
            if "kv" in route:
                out[status] = out.get(status, 0.0) + float(count)
    return out


def total(counts: dict[str, float]) -> float:
    return sum(counts.values())


def served_rate(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    answered = total(after) - total(before)
    by_status = ", ".join(
        f"{status}: {after[status] - before.get(status, 0.0):,.0f}"
        for status in sorted(after)
        if after[status] != before.get(status, 0.0)
    )
    return f"{answered / max(seconds, 1e-9):,.0f} ops/s ({by_status})"


def levels_of(url: str) -> str:
    """A node's LSM levels, entries in each (what a range cut merges)."""
    health = httpx.get(f"{url}/api/v1/health", headers=SECRET_HEADERS, timeout=10.0).json()
    storage = health["storage"]
    return " ".join(f"L{lv['level']} {lv['entries']:,}" for lv in storage["levels"] if lv["files"])


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and every live descendant (offload workers), and
    of the children they already reaped, from /proc."""
    return sum(tree_cpu_by_process(pids).values())


def tree_cpu_by_process(pids: list[int], own: bool = False) -> dict[int, float]:
    """`tree_cpu_seconds` of each of `pids` (its offload workers included; `own`: without)."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            stats[int(entry)] = text.rsplit(")", 1)[1].split()
    out: dict[int, float] = {}
    for root in pids:
        wanted, frontier = set(), [root] if root in stats else []
        while frontier:
            pid = frontier.pop()
            wanted.add(pid)
            if not own:
                frontier.extend(c for c, f in stats.items() if int(f[1]) == pid and c not in wanted)
        ticks = sum(sum(int(x) for x in stats[p][11:15]) for p in wanted)
        out[root] = ticks / os.sysconf("SC_CLK_TCK")
    return out


class PhaseCpu:
    """Each node's CPU (offload workers included) split by the transition's phase, from the
    /proc samples taken at every poll of the join: where a migration's CPU goes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.last = self._now()
        self.last_at = time.monotonic()
        self.by_phase: dict[str, list[tuple[float, float]]] = {}
        self.seconds: dict[str, float] = {}  # wall-clock time in each phase (to 0.2 s polls)

    def _now(self) -> dict[int, tuple[float, float]]:
        tree, own = tree_cpu_by_process(self.pids), tree_cpu_by_process(self.pids, own=True)
        return {pid: (tree.get(pid, 0.0), own.get(pid, 0.0)) for pid in self.pids}

    def sample(self, phase: str) -> None:
        now = self._now()
        row = self.by_phase.setdefault(phase, [(0.0, 0.0)] * len(self.pids))
        for i, pid in enumerate(self.pids):
            (tree, own), (tree0, own0) = now[pid], self.last[pid]
            row[i] = (row[i][0] + tree - tree0, row[i][1] + own - own0)
        self.last = now
        at = time.monotonic()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + at - self.last_at
        self.last_at = at

    def lines(self) -> list[str]:
        names = [f"n{i}" for i in range(len(self.pids))]
        return [
            f"  CPU in {phase:<9} ({self.seconds[phase]:4.1f}s)  "
            + "  ".join(
                f"{n} {tree:4.1f}s ({tree - own:3.1f} workers)"
                for n, (tree, own) in zip(names, row, strict=True)
            )
            for phase, row in self.by_phase.items()
        ]


def run(args: argparse.Namespace, mode: str, base_port: int) -> dict:
    """One cluster, preloaded, and a 4th node joining it under load with `mode` streaming."""
    env = {
        "LIMEDB_DURABILITY": args.durability,
        "LIMEDB_LOG_LEVEL": "warning",
        "LIMEDB_REPLICATION_FACTOR": "3",
        "LIMEDB_STREAM_MODE": mode,
    }
    if args.stream_mb_per_s is not None:
        env["LIMEDB_STREAM_MB_PER_S"] = str(args.stream_mb_per_s)
    wrk_env = {"BENCH_KEYS": str(args.keys)}
    root = Path(tempfile.mkdtemp(prefix="limedb-bench-migration-"))
    joiner = None
    print(f"== {mode} streaming", flush=True)
    try:
        with LocalCluster(root, 3, base_port, env) as cluster:
            print(f"preloading {args.keys:,} keys (100-byte values, RF=3) ...", flush=True)
            load_rate = cluster.preload(args.keys, workers=4)
            print(f"  {load_rate:,.0f} keys/s", flush=True)
            print(f"  compactions settled in {cluster.wait_settled():.1f} s", flush=True)
            port = base_port + 3
            url = f"http://127.0.0.1:{port}"
            joiner = start_node_with_env(
                url, port, root / "n3", cluster.urls, {**env, "LIMEDB_AWAIT_JOIN": "true"}
            )
            wait_ready(url, timeout_s=120.0)
            pids = [p.pid for p in cluster.procs] + [joiner.pid]
            print(f"  n0's levels (entries): {levels_of(cluster.urls[0])}", flush=True)

            with LoadWindows(cluster, args.connections, wrk_env) as load:
                # The first seconds of load run on cold caches (every table decoded on its first
                # reads): their windows climb, so the anchor counts only those after a warm-up.
                time.sleep(args.warmup_s)
                anchor_from = time.monotonic()
                served_anchor = served(cluster.urls)
                cpu_at_anchor = tree_cpu_seconds(pids)
                time.sleep(args.anchor_s)
                served_join = served(cluster.urls)
                cpu_anchor = tree_cpu_seconds(pids) - cpu_at_anchor
                join_started = time.monotonic()
                cpu_before = tree_cpu_seconds(pids)
                split = PhaseCpu(pids)
                print("joining the 4th node under load ...", flush=True)
                transition, migration_s = join_and_wait(cluster.urls[0], url, split.sample)
                cpu_s = tree_cpu_seconds(pids) - cpu_before
                join_ended = time.monotonic()
                served_done = served(cluster.urls)
                # The window in flight at the end belongs to "during"; the ones after show what
                # follows "done" (the old owners' purge, the verification), CPU split as "after".
                while time.monotonic() < join_ended + args.after_s:
                    time.sleep(0.2)
                    split.sample("after")
            for start, end, result in load.windows:
                print(
                    f"  window {start - join_started:+6.1f}s..{end - join_started:+6.1f}s  "
                    f"{result['ops_s']:8,.0f} ops/s  p99 {result['p99_ms']:6.1f} ms",
                    flush=True,
                )
            print("\n".join(split.lines()) + "  (n0 drives the join, n3 joins)", flush=True)
            print(
                "  served by n0-n2 (/metrics): before "
                + served_rate(served_anchor, served_join, join_started - anchor_from)
                + "; during "
                + served_rate(served_join, served_done, join_ended - join_started),
                flush=True,
            )
            before = load.ops_s(anchor_from, join_started)
            during = load.ops_s(join_started, join_ended)
            after = load.ops_s(join_ended, join_ended + args.after_s)
            # The nodes' CPU per request they served in the anchor, charged for every request
            # they served during the migration: what is left is the migration's own CPU (the
            # streaming, the ingest, the double writes' extra), which the client load, itself
            # throttled by the migration, would otherwise hide in "CPU per MB".
            per_request = cpu_anchor / max(total(served_join) - total(served_anchor), 1.0)
            cpu_beyond = cpu_s - per_request * (total(served_done) - total(served_join))
    finally:
        if joiner is not None:
            stop_all([joiner])
        shutil.rmtree(root, ignore_errors=True)
    nbytes = transition["bytes_streamed"]
    return {
        "mode": mode,
        "migration_s": migration_s,
        "keys": transition["keys_streamed"],
        "bytes": nbytes,
        "ranges": transition["ranges_moved"],
        "before": before,
        "during": during,
        "after": after,
        "after_s": args.after_s,
        "ratio": during / before if before else 0.0,
        "cpu_s": cpu_s,
        "cpu_s_per_mb": cpu_s / max(nbytes / 1e6, 1e-9),
        "cpu_per_request_us": per_request * 1e6,
        "cpu_beyond_s": cpu_beyond,
        "cpu_beyond_per_mb": cpu_beyond / max(nbytes / 1e6, 1e-9),
    }


def parse_throttle(text: str) -> int | None:
    """`--stream-mb-per-s`: MB/s (0 = unlimited), or `node` for the node's own default (None)."""
    if text == "node":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate in MB/s nor 'node': {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a rate cannot be negative: {value}")
    return value


def describe_throttle(mb_per_s: int | None) -> str:
    if mb_per_s is None:
        return f"the node's default, {NODE_MB_PER_S} MB/s"
    if mb_per_s == 0:
        return "unlimited (--stream-mb-per-s 0)"
    return f"{mb_per_s} MB/s (--stream-mb-per-s; the node's default is {NODE_MB_PER_S})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 keys, shorter anchor")
    parser.add_argument(
        "--connections", type=int, default=16, help="wrk connections (0: no client load)"
    )
    parser.add_argument(
        "--warmup-s", type=int, default=10, help="load before the anchor, not counted"
    )
    parser.add_argument(
        "--anchor-s", type=int, default=10, help="load counted as the anchor, before the join"
    )
    parser.add_argument(
        "--after-s",
        type=int,
        default=30,
        help='load kept on after "done": its windows, CPU and mean rate printed, not a goal',
    )
    parser.add_argument("--durability", default="periodic")
    parser.add_argument("--base-port", type=int, default=18600)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--modes", default="tables,keys", help="streaming modes, in this order")
    parser.add_argument(
        "--stream-mb-per-s",
        type=parse_throttle,
        default=BENCH_MB_PER_S,
        help=f"the nodes' range-streaming throttle in MB/s, 0 = unlimited, 'node' = the node's "
        f"own default (default: {BENCH_MB_PER_S})",
    )
    args = parser.parse_args()
    if args.quick:
        args.keys = min(args.keys, 100_000)
        args.anchor_s = min(args.anchor_s, 6)
        args.warmup_s = min(args.warmup_s, 4)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    load_before = os.getloadavg()
    results = [run(args, mode, args.base_port + 10 * i) for i, mode in enumerate(modes)]
    load_after = os.getloadavg()

    def row(name: str, fmt) -> tuple[str, ...]:  # noqa: ANN001 - a formatter per result
        return (name, *(fmt(r) for r in results))

    rows = [
        row("migration time (join to done)", lambda r: f"{r['migration_s']:.1f} s"),
        row("keys streamed", lambda r: f"{r['keys']:,} ({r['keys'] / r['migration_s']:,.0f}/s)"),
        row(
            "bytes streamed",
            lambda r: f"{r['bytes'] / 1e6:.1f} MB ({r['bytes'] / 1e6 / r['migration_s']:.1f} MB/s)",
        ),
        row("ranges moved", lambda r: f"{r['ranges']}"),
        row("client ops/s before (anchor)", lambda r: f"{r['before']:,.0f}"),
        row("client ops/s during", lambda r: f"{r['during']:,.0f}"),
        row("during / before", lambda r: f"{r['ratio']:.2f}"),
        row(
            "client ops/s after done (purge, verification)",
            lambda r: (
                f"{r['after']:,.0f} over {r['after_s']} s, "
                f"{r['after'] / r['before'] if r['before'] else 0:.2f} of before"
            ),
        ),
        row("node CPU during the migration", lambda r: f"{r['cpu_s']:.1f} s"),
        row("node CPU per MB streamed", lambda r: f"{r['cpu_s_per_mb'] * 1000:.0f} ms"),
        row("node CPU per request, anchor", lambda r: f"{r['cpu_per_request_us']:.0f} us"),
        row(
            "migration's own CPU (beyond requests)",
            lambda r: f"{r['cpu_beyond_s']:.1f} s, {r['cpu_beyond_per_mb'] * 1000:.0f} ms per MB",
        ),
    ]
    header = ("measure", *(f"{r['mode']} streaming" for r in results))
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    print()
    print(
        f"{args.keys:,} keys (100-byte values, RF=3), stream throttle "
        f"{describe_throttle(args.stream_mb_per_s)}, durability {args.durability}; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    for line in [header, *rows]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(line, widths, strict=True)))
    print(f"goals: migration <= {GOAL_S:.0f} s, during / before >= {GOAL_RATIO}")
    for r in results:
        met = (r["migration_s"] <= GOAL_S, r["ratio"] >= GOAL_RATIO)
        print(f"  {r['mode']} streaming: {VERDICTS[met]}")

    if not args.no_doc:
        table = "\n".join("| " + " | ".join(line) + " |" for line in rows)
        throttle = describe_throttle(args.stream_mb_per_s)
        intro = (
            f"`benchmarks/bench_migration.py{' --quick' if args.quick else ''}`, "
            f"{time.strftime('%Y-%m-%d')}: a 4th node joins a 3-node cluster holding "
            f"{args.keys:,} keys (100-byte values, RF=3) under a constant 50/50 read/write wrk "
            f"load ({args.connections} connections) on the three original nodes, once per "
            f"streaming mode, each on a fresh cluster; every process shares this machine's "
            f"cores (durability {args.durability}, stream throttle {throttle}; load average "
            f"{load_before[0]:.1f} before the run, {load_after[0]:.1f} after)."
        )
        replace_section(
            "migration",
            "## Migration\n\n"
            + textwrap.fill(intro, 100)
            + "\n\n| "
            + " | ".join(header)
            + " |\n|"
            + "---|" * len(header)
            + "\n"
            + table
            + "\n\nThe command: `.venv/bin/python benchmarks/bench_migration.py` (`--quick`: "
            f"100,000 keys; `--stream-mb-per-s N` sets the throttle, {BENCH_MB_PER_S} MB/s unless "
            f"told, `node` leaves the node's default of {NODE_MB_PER_S} MB/s; `--modes` picks the "
            "streaming modes; `--connections 0`: no client load). Node CPU is the four node processes' and their offload workers' "
            "user + system time from the join to done; the migration's own CPU is that minus "
            "the anchor's CPU per request times the requests served during the migration, so "
            "the client load (smaller when the migration takes more of it) is not counted in it. Every node, the joiner and wrk share 2 "
            "cores, so the ratio is noisy; the stream throttle trades migration time for it (a "
            'sweep is in docs/transitions.md, Streaming). The windows printed after "done" (`--after-s`, 30 s, '
            'CPU split as "after"; their mean rate is the "after done" row) carry the old owners\' purge of the ranges they handed off '
            "and the verification.\n\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
