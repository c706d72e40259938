"""Range purge benchmark: `Engine.purge_ranges` against a full compaction of the same data.

    python benchmarks/bench_purge.py            # 1,000,000 keys
    python benchmarks/bench_purge.py --quick    # 200,000 keys

Keys are an 8-byte token (random, as in a cluster) plus 8 bytes, values 100 bytes, default
engine options. The data is loaded and compacted once, the directory copied, then one copy is
fully compacted again (the anchor: every table rewritten) and the other purges 64 ranges
covering a quarter of the token space (what a node hands off when a fourth node joins at RF 3,
with 16 vnodes). Both are timed in this run; the ratio is purge time / full-compaction time.

The purge runs as the node runs it, in a thread beside an asyncio event loop; a 1 ms ticker on
that loop reports the longest stall the purge caused (the node's client traffic would wait that
long), and the CPU seconds the purge took in this process (its table rewrites run in offload
worker processes, whose CPU is reported apart). A third copy is purged with offloading turned
off, for the stall it would cause without the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from limedb.storage import Engine, EngineOptions  # noqa: E402

VALUE = b"v" * 100
RANGES = 64
UNTHROTTLED = EngineOptions(compaction_rate_bytes_per_s=0)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(".sst"))


def _children_cpu() -> float:
    """CPU seconds used so far by this process's living children (the offload workers)."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except FileNotFoundError:
                    continue
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def _purge_beside_a_loop(e: Engine, ranges: list) -> tuple[int, float]:
    """Purge in a thread (as the node does) while a 1 ms ticker measures the loop's stalls."""
    done = False
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    try:
        rewritten = await asyncio.to_thread(e.purge_ranges, ranges)
    finally:
        done = True
        await tick
    return rewritten, worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200_000 if args.quick else 1_000_000
    rng = random.Random(7)
    root = Path(tempfile.mkdtemp(prefix="limedb-bench-purge-"))
    try:
        base = root / "base"
        with Engine.open(base, EngineOptions()) as e:
            for i in range(n):
                e.put(rng.getrandbits(64).to_bytes(8, "big") + i.to_bytes(8, "big"), VALUE)
            e.compact()
        anchor_dir, purge_dir, inproc_dir = root / "anchor", root / "purge", root / "inproc"
        for copy in (anchor_dir, purge_dir, inproc_dir):
            shutil.copytree(base, copy)
        size = _bytes(base)

        with Engine.open(anchor_dir, EngineOptions()) as e:
            t = time.perf_counter()
            e.compact()
            anchor_s = time.perf_counter() - t

        # 64 ranges, each a quarter of one of 64 equal slices of the token space.
        step = (1 << 64) // RANGES
        ranges = [
            ((k * step).to_bytes(8, "big"), (k * step + step // 4).to_bytes(8, "big"))
            for k in range(RANGES)
        ]
        # Unthrottled, like the manual full compaction it is compared with (in a node a purge
        # is background work, held to compaction_rate_bytes_per_s).
        with Engine.open(purge_dir, UNTHROTTLED) as e:
            t, cpu, workers = time.perf_counter(), os.times(), _children_cpu()
            rewritten, stall_s = asyncio.run(_purge_beside_a_loop(e, ranges))
            purge_s = time.perf_counter() - t
            used = os.times()
            own_cpu = used.user + used.system - cpu.user - cpu.system
            child_cpu = _children_cpu() - workers
            left = e.approx_key_count()
        after = _bytes(purge_dir)
        # The same purge with offloading turned off: what the event loop suffers without it.
        with Engine.open(
            inproc_dir, EngineOptions(offload_workers=0, compaction_rate_bytes_per_s=0)
        ) as e:
            _, inproc_stall_s = asyncio.run(_purge_beside_a_loop(e, ranges))
        print(f"keys {n:,}, tables {size / 1e6:.1f} MB, {os.cpu_count()} cores")
        print(
            "configuration: the same engine options on both sides (defaults, "
            f"{EngineOptions().offload_workers} offload workers), both unthrottled"
        )
        print(f"full compaction (anchor)  {anchor_s:6.2f} s  {n / anchor_s:>12,.0f} keys/s")
        print(
            f"purge of 1/4 in {RANGES} ranges {purge_s:6.2f} s  {n / purge_s:>12,.0f} keys/s "
            f"scanned, {rewritten} tables rewritten, ratio {purge_s / anchor_s:.2f}x "
            f"(target <= 1.2x)"
        )
        print(
            f"during the purge: longest event-loop stall {stall_s * 1000:.1f} ms, CPU "
            f"{own_cpu:.2f} s in this process, {child_cpu:.2f} s in offload workers "
            f"(in-process purge: longest stall {inproc_stall_s * 1000:.1f} ms)"
        )
        print(f"after the purge: {left:,} entries, tables {after / 1e6:.1f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
