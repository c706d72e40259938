"""Storage engine benchmark: LimeDB's LSM engine against rocksdict (and plyvel) in the same run.

    python benchmarks/bench_engine.py            # 1,000,000 keys (the acceptance dataset)
    python benchmarks/bench_engine.py --quick    # 100,000 keys
    python benchmarks/bench_engine.py --update-doc   # also rewrite the section in docs/benchmarks.md

Keys are 16 random bytes, values 100 bytes, raw bytes everywhere; the engine runs with its
default options (16 MiB memtable, so most of the ~116 MB of data sits in SSTables) and every
anchor with the same budgets (benchmarks/engine_anchors.py: rocksdict and plyvel with the same
write buffer, block cache, bloom bits per key, block and file sizes, no compression, WAL not
fsynced), each configuration printed. rocksdict opened with its library defaults runs as a
labelled extra (--no-defaults skips it). Every figure is printed with its ratio to the anchor
measured in this same process. Writes run one store at a time (each drained before the next),
in two rounds with the order reversed, keeping each store's best round; reads run in chunks
rotating between the stores, so load swings on a shared machine hit each store alike.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from _doc import replace_section  # noqa: E402
from engine_anchors import (  # noqa: E402
    Store,
    limedb_config,
    open_plyvel,
    open_rocksdict,
    open_rocksdict_defaults,
)
from limedb.storage import Engine, EngineOptions  # noqa: E402

VALUE = b"v" * 100
# LimeDB's defaults, except that the put/get rounds do not fsync; every anchor reads its budgets
# from these options.
ENGINE_OPTIONS = EngineOptions(durability="none")


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Results:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, name: str, ours: float, anchor_name: str, anchor: float, target: str) -> None:
        ratio = ours / anchor if anchor else float("inf")
        row = (name, f"{ours:,.0f}/s", f"{anchor_name} {anchor:,.0f}/s", f"{ratio:.2f}x", target)
        self.rows.append(row)
        print(f"{name:<46} {row[1]:>14}  vs {row[2]:<26} ratio {row[3]:>7}  (target {target})")
        sys.stdout.flush()

    def note(self, name: str, value: str, target: str) -> None:
        self.rows.append((name, value, "", "", target))
        print(f"{name:<46} {value:>14}  (target {target})")
        sys.stdout.flush()

    def markdown(self) -> str:
        lines = [
            "| figure | LimeDB engine | anchor (same run) | ratio | target |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in self.rows]
        return "\n".join(lines)


def add_per_cpu_second(r: Results, res: dict, phase: str) -> None:
    """The row under a wall-clock row: the same LimeDB / rocksdict ratio per CPU-second."""
    r.add(
        "  same, per CPU-second (less load-dependent)",
        res[f"limedb_{phase}_cpu"],
        "rocksdict",
        res[f"rocksdict_{phase}_cpu"],
        "info",
    )


class Contender:
    """One store under test, with the time and CPU it spent per phase."""

    def __init__(self, store: Store, engine: Engine | None = None) -> None:
        self.name = store.name
        self.config = store.config
        self.put = store.put
        self.get = store.get
        self.settle = store.drain
        self.close = store.close
        self.engine = engine
        self.seconds: dict[str, float] = {}

    def timed_chunk(self, phase: str, fn, items) -> None:  # noqa: ANN001
        cpu = self.cpu_seconds()
        t = time.perf_counter()
        for k in items:
            fn(k)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t
        self.seconds[phase + "_cpu"] = (
            self.seconds.get(phase + "_cpu", 0.0) + self.cpu_seconds() - cpu
        )

    def cpu_seconds(self) -> float:
        """CPU time of this process (all threads, so RocksDB's and LevelDB's background threads
        too) plus LimeDB's worker processes, if any."""
        t = os.times()
        total = t.user + t.system
        pool = self.engine._pool if self.engine is not None else None
        for pid in pool.pids() if pool is not None else []:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total


def open_limedb(path: str, opts: EngineOptions) -> Contender:
    e = Engine.open(path, opts)

    def drain() -> None:
        e.flush()
        while e.stats()["compaction_backlog_bytes"] > 0:
            time.sleep(0.05)

    return Contender(Store("limedb", limedb_config(opts), e.put, e.get, drain, e.close), e)


def open_contenders(root: str, defaults: bool) -> list[Contender]:
    """The anchors first, LimeDB last; every anchor with LimeDB's budgets (engine_anchors.py)."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    out = [Contender(open_rocksdict(os.path.join(root, "rocksdict"), ENGINE_OPTIONS))]
    try:
        out.append(Contender(open_plyvel(os.path.join(root, "plyvel"), ENGINE_OPTIONS)))
    except ImportError:
        print("plyvel not installed: skipped (pip install -e '.[bench]')")
    if defaults:
        out.append(Contender(open_rocksdict_defaults(os.path.join(root, "rocksdict-defaults"))))
    out.append(open_limedb(os.path.join(root, "limedb"), ENGINE_OPTIONS))
    return out


def interleaved(contenders: list[Contender], phase: str, items: list, chunks: int, op: str) -> None:
    """Run `op` over `items` in chunks, rotating between contenders, so that load swings on a
    shared machine hit every contender alike."""
    size = max(1, len(items) // chunks)
    for i in range(0, len(items), size):
        part = items[i : i + size]
        for c in contenders if (i // size) % 2 == 0 else reversed(contenders):
            c.timed_chunk(
                phase, getattr(c, op) if op == "get" else lambda k, c=c: c.put(k, VALUE), part
            )


def bench_stores(root: str, keys, hits, misses, res: dict, args) -> None:  # noqa: ANN001
    # Writes: one store at a time, each followed by its own flush/compaction drain so no store's
    # background work runs during another's measurement; `rounds` rounds into fresh directories
    # with the order reversed each round, keeping each store's best round (load on a shared
    # machine swings within seconds).
    best: dict[str, tuple[float, float]] = {}
    drains: dict[str, float] = {}
    for r in range(args.rounds):
        contenders = open_contenders(os.path.join(root, f"round{r}"), not args.no_defaults)
        lime = contenders[-1]
        for c in reversed(contenders) if r % 2 == 0 else contenders:
            c.timed_chunk("put", lambda k, c=c: c.put(k, VALUE), keys)
            if c.settle:
                d = timed(c.settle)
                drains[c.name] = min(d, drains.get(c.name, d))
            wall, cpu = c.seconds.pop("put"), c.seconds.pop("put_cpu")
            old = best.get(c.name)
            best[c.name] = (min(wall, old[0]), min(cpu, old[1])) if old else (wall, cpu)
        if r < args.rounds - 1:
            for c in contenders:
                c.close()
    res["configs"] = {c.name: c.config for c in contenders}
    res["names"] = [c.name for c in contenders]
    for c in contenders:
        c.seconds["put"], c.seconds["put_cpu"] = best[c.name]
    for name, d in drains.items():
        res[f"{name}_drain_s"] = d
    e = lime.engine
    res["levels"] = ", ".join(
        f"L{lvl['level']}:{lvl['files']}" for lvl in e.stats()["levels"] if lvl["files"]
    )
    for c in contenders:  # warm every cache the same way before measuring reads
        for k in hits:
            c.get(k)
    interleaved(contenders, "get", hits, 10, "get")
    interleaved(contenders, "miss", misses, 10, "get")
    for c in contenders:
        assert all(c.get(k) == VALUE for k in hits[:1000]), c.name
        assert all(c.get(k) is None for k in misses[:1000]), c.name
    for c in contenders:
        for phase, n in (("put", len(keys)), ("get", len(hits)), ("miss", len(misses))):
            res[f"{c.name}_{phase}"] = rate(n, c.seconds[phase])
            res[f"{c.name}_{phase}_cpu"] = rate(n, c.seconds[phase + "_cpu"])
        if f"{c.name}_drain_s" in res:
            res[f"{c.name}_putdrain"] = rate(len(keys), c.seconds["put"] + res[f"{c.name}_drain_s"])
        c.close()
    path = os.path.join(root, f"round{args.rounds - 1}", "limedb")

    def reopen() -> None:
        e2 = Engine.open(path, ENGINE_OPTIONS)
        assert e2.get(keys[0]) == VALUE
        e2.close()

    res["reopen_s"] = timed(reopen)


async def _writers(e: Engine, writers: int, per_writer: int) -> None:
    async def one(w: int) -> None:
        for i in range(per_writer):
            await e.put_async(b"w%03d-%08d" % (w, i), VALUE)

    await asyncio.gather(*(one(w) for w in range(writers)))


def bench_sync(root: str, writers: int, per_writer: int, single: int, res: dict) -> None:
    path = os.path.join(root, "sync1")
    e = Engine.open(path, dataclasses.replace(ENGINE_OPTIONS, durability="sync"))
    res["sync_single"] = rate(
        single, timed(lambda: [e.put(b"s-%08d" % i, VALUE) for i in range(single)])
    )
    e.close()
    shutil.rmtree(path, ignore_errors=True)
    path = os.path.join(root, "sync64")
    e = Engine.open(path, dataclasses.replace(ENGINE_OPTIONS, durability="sync"))
    n = writers * per_writer
    try:  # the node server runs on uvloop; measure the engine the way it is used there
        import uvloop

        runner = uvloop.run
        res["loop"] = "uvloop"
    except ImportError:
        runner = asyncio.run
        res["loop"] = "asyncio"
    res["sync_group"] = rate(n, timed(lambda: runner(_writers(e, writers, per_writer))))
    st = e.stats()
    assert st["synced_seq"] >= st["last_seq"]
    e.close()
    shutil.rmtree(path, ignore_errors=True)
    bench_rocksdict_sync(root, writers, n, single, res)


def bench_rocksdict_sync(root: str, group: int, n: int, single: int, res: dict) -> None:
    """rocksdict with sync=True: one fsync per put, and one per WriteBatch of `group` puts.

    rocksdict holds the GIL inside put, so Python threads never reach RocksDB's write group
    together; a WriteBatch of `group` puts per sync write is what the write group would form
    for `group` concurrent C++ writers, the equivalent of LimeDB's group commit."""
    import rocksdict as rd

    path = os.path.join(root, "rocksdict-sync")
    s = open_rocksdict(path, ENGINE_OPTIONS, sync=True)
    res["configs"]["rocksdict (sync rows)"] = s.config
    res["rocksdict_sync_single"] = rate(
        single, timed(lambda: [s.put(b"s-%08d" % i, VALUE) for i in range(single)])
    )
    db = s.put.__self__

    def batches() -> None:
        for b in range(0, n, group):
            wb = rd.WriteBatch(raw_mode=True)
            for i in range(b, min(n, b + group)):
                wb.put(b"b-%08d" % i, VALUE)
            db.write(wb)

    res["rocksdict_sync_group"] = rate(n, timed(batches))
    assert s.get(b"b-%08d" % (n - 1)) == VALUE
    s.close()
    shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 keys instead of 1,000,000")
    ap.add_argument("--keys", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="write rounds (best kept)")
    ap.add_argument("--dir", default=None, help="where to put the databases (default: a tmp dir)")
    ap.add_argument(
        "--no-defaults", action="store_true", help="skip the extra rocksdict-defaults store"
    )
    ap.add_argument("--update-doc", action="store_true", help="rewrite docs/benchmarks.md section")
    args = ap.parse_args()
    n = args.keys or (100_000 if args.quick else 1_000_000)
    rng = random.Random(42)
    keys = [rng.randbytes(16) for _ in range(n)]
    key_set = set(keys)
    misses = []
    while len(misses) < min(n, 500_000):
        k = rng.randbytes(16)
        if k not in key_set:
            misses.append(k)
    hits = rng.sample(keys, min(n, 500_000))
    root = tempfile.mkdtemp(prefix="limedb-bench-", dir=args.dir)
    print(
        f"dataset: {n:,} keys x (16 B key + 100 B value); {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the start (a shared machine: other engineers' work "
        f"runs on the same cores); dir {root}"
    )
    res: dict = {}
    gc.collect()
    try:
        bench_stores(root, keys, hits, misses, res, args)
        gc.collect()
        bench_sync(root, 64, max(200, n // 640), max(200, n // 2000), res)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("configurations:")
    for name, config in res["configs"].items():
        print(f"  {name}: {config}")
    r = report(res, n)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.update_doc:
        write_doc(r, res, n)
    return 0


def compare(r: Results, res: dict, label: str, phase: str, target: str) -> None:
    """LimeDB against the fair rocksdict (with its CPU-second row), then the other stores."""
    ours = res[f"limedb_{phase}"]
    r.add(label, ours, "rocksdict", res[f"rocksdict_{phase}"], target)
    if f"limedb_{phase}_cpu" in res:
        add_per_cpu_second(r, res, phase)
    for name in ("plyvel", "rocksdict-defaults"):
        if f"{name}_{phase}" in res:
            extra = " (extra)" if name == "rocksdict-defaults" else ""
            r.add(f"  vs {name}{extra}", ours, name, res[f"{name}_{phase}"], "info")


def report(res: dict, n: int) -> Results:
    r = Results()
    compare(r, res, "put, durability none (WAL not fsynced)", "put", ">= 0.8x")
    compare(r, res, "put incl. flush + compaction drain", "putdrain", "info")
    for name in res["names"]:
        if f"{name}_drain_s" in res:
            extra = f"; {res['levels']}" if name == "limedb" else ""
            r.note(f"  drain, {name}", f"{res[f'{name}_drain_s']:.2f} s", f"info{extra}")
    compare(r, res, "get existing keys (random)", "get", ">= 1.0x")
    compare(r, res, "get missing keys", "miss", ">= 1.0x")
    r.add(
        f"sync writes, 64 concurrent writers ({res['loop']})",
        res["sync_group"],
        "one fsync per write",
        res["sync_single"],
        ">= 50,000/s and >= 12x",
    )
    r.add(
        "  vs rocksdict sync=True, WriteBatch of 64 per fsync",
        res["sync_group"],
        "rocksdict",
        res["rocksdict_sync_group"],
        "info",
    )
    r.add(
        "one fsync per write, vs rocksdict sync=True",
        res["sync_single"],
        "rocksdict",
        res["rocksdict_sync_single"],
        "info",
    )
    r.note(f"reopen after writing {n:,} keys", f"{res['reopen_s']:.2f} s", "< 2 s")
    return r


NOTES = """How to read it: every anchor runs with LimeDB's budgets (configurations above,
`benchmarks/engine_anchors.py`): the same memtable, block cache, bloom bits per key, block and
file sizes, level shape, no compression, raw bytes, WAL written but not fsynced in the
`durability none` rows. `rocksdict-defaults` is `Rdict(path)` as the library opens it (pickled
values, no bloom filter, RocksDB's default cache, compression on): an extra line only, to show
how much of an anchor's figure is its configuration. Wall-clock rates depend on what else runs
on the machine; the per-CPU-second rows divide by the CPU time the store used (this process,
all its threads, RocksDB's background threads included, plus LimeDB's flush/compaction worker
processes), which depends on it less. Writes run one store at a time, each drained before the next, the
best of two rounds kept; the drain is the time from the last put until the store has no flush
or compaction left (LevelDB offers no way to wait for that, so plyvel has no drain row). Reads
are measured after every store finished its background work, rotating between stores chunk by
chunk. rocksdict holds the GIL inside a put, so 64 Python threads would not form one RocksDB
write group; its sync row writes WriteBatches of 64 with sync=True instead, which is what the
write group would do for 64 concurrent writers."""


def write_doc(r: Results, res: dict, n: int) -> None:
    configs = "\n".join(f"- `{name}`: {config}" for name, config in res["configs"].items())
    section = (
        "## Storage engine\n\n"
        f"`python benchmarks/bench_engine.py{'' if n == 1_000_000 else f' --keys {n}'}` "
        f"({n:,} keys of 16 bytes, values of 100 bytes; measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on a shared, busy "
        f"{os.cpu_count()}-CPU machine (other engineers' work on the same cores), load average "
        f"{os.getloadavg()[0]:.1f} at the end).\n\nConfigurations, as the run printed them:\n\n"
        f"{configs}\n\n{r.markdown()}\n\n{NOTES}"
    )
    replace_section("storage-engine", section)


if __name__ == "__main__":
    raise SystemExit(main())
