"""Where the storage engine's CPU goes per put, get and miss, beside rocksdict and the floor.

Writes --keys keys (16 B, 100 B values, engine defaults, durability none) into LimeDB's engine
and into rocksdict configured with the same budgets (engine_anchors.py, printed), drains both,
then measures in the calling thread's CPU time (`time.thread_time`: time spent waiting for a
core on a busy machine is not counted), on the same keys, alternating LimeDB and rocksdict:

- put, get of a present key, get of a missing key, per operation, for both stores;
- the floor: the benchmark loop calling a Python function that does nothing (what any store
  called from Python pays), and `dict.get` over a dict of the same keys (the cheapest Python
  lookup into a structure of that size: mostly cache and TLB misses);
- "hot" gets: the same 20 keys over and over, so that everything they touch sits in the CPU's
  caches; the difference to the random gets is time spent waiting for memory;
- Python bytecodes executed per operation (sys.settrace with opcode events: independent of the
  load), and under cProfile the Python calls each operation makes and where its own time goes.

The put's background work (flush, table builds and compactions in worker processes for
LimeDB, RocksDB's background threads) is not in the writer-thread figures; bench_engine's
per-CPU-second rows include it. Not part of `make bench` (run_all.py runs bench_*.py only).

    .venv/bin/python benchmarks/profile_engine.py [--keys 300000]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from engine_anchors import open_rocksdict  # noqa: E402
from limedb.storage import Engine, EngineOptions  # noqa: E402

VALUE = b"v" * 100
OPTIONS = EngineOptions(durability="none")


def cpu_us_per_op(fn: Callable[[bytes], object], keys: list[bytes]) -> float:
    started = time.thread_time()
    for k in keys:
        fn(k)
    return (time.thread_time() - started) / len(keys) * 1e6


def bytecodes_per_op(fn: Callable[[bytes], object], keys: list[bytes]) -> float:
    """Python bytecodes executed per call of `fn` (C code, e.g. rocksdict's, counts as none)."""
    count = 0

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        nonlocal count
        if event == "opcode":
            count += 1
        elif event == "call":
            frame.f_trace_opcodes = True
        return tracer

    def loop() -> None:
        for k in keys:
            fn(k)

    sys.settrace(tracer)
    try:
        loop()
    finally:
        sys.settrace(None)
    return count / len(keys)


def profiled(name: str, fn: Callable[[bytes], object], keys: list[bytes], top: int) -> None:
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    for k in keys:
        fn(k)
    prof.disable()
    stats = pstats.Stats(prof)
    entries = stats.stats  # type: ignore[attr-defined]
    calls = sum(v[1] for v in entries.values()) / len(keys)
    total = sum(v[2] for v in entries.values()) or 1.0
    print(f"  {name}: {calls:.1f} calls per operation; most own time:")
    for func, (_cc, nc, tt, _ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][2])[
        :top
    ]:
        where = func[0].split("/node/")[-1] if func[0] != "~" else ""
        print(
            f"    {100 * tt / total:5.1f}%  {nc / len(keys):5.2f}/op  {where}:{func[1]} {func[2]}"
        )


def drain_limedb(e: Engine) -> None:
    e.flush()
    while e.stats()["compaction_backlog_bytes"] > 0:
        time.sleep(0.05)


def alternating(rows: dict[str, list[float]], pairs: list, rounds: int) -> None:
    """Each (label, fn, keys) measured `rounds` times, order reversed every round."""
    for r in range(rounds):
        for label, fn, keys in pairs if r % 2 == 0 else reversed(pairs):
            rows.setdefault(label, []).append(cpu_us_per_op(fn, keys))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=300_000)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    rng = random.Random(1)
    keys = [rng.randbytes(16) for _ in range(args.keys)]
    sample = max(1, min(100_000, args.keys // 3))
    hits = rng.sample(keys, sample)
    misses = [rng.randbytes(16) for _ in range(sample)]
    hot = hits[:20] * (sample // 20)
    root = tempfile.mkdtemp(prefix="limedb-profile-engine-")
    print(
        f"profile_engine: {args.keys:,} keys, durability none; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f} at the start"
    )
    rows: dict[str, list[float]] = {}
    try:
        e = Engine.open(os.path.join(root, "limedb"), OPTIONS)
        rd = open_rocksdict(os.path.join(root, "rocksdict"), OPTIONS)
        print(f"  rocksdict: {rd.config}")
        rows["put: limedb"] = [cpu_us_per_op(lambda k: e.put(k, VALUE), keys[sample:])]
        rows["put: rocksdict"] = [cpu_us_per_op(lambda k: rd.put(k, VALUE), keys[sample:])]
        put_codes = bytecodes_per_op(lambda k: e.put(k, VALUE), keys[:2000])
        profiled("put", lambda k: e.put(k, VALUE), keys[2000:sample], args.top)
        for k in keys[:sample]:
            rd.put(k, VALUE)
        drain_limedb(e)
        rd.drain()
        table = {k: VALUE for k in keys}
        for k in hits:  # warm both caches, as bench_engine does
            e.get(k)
            rd.get(k)

        def noop(k: bytes) -> None:
            return None

        alternating(
            rows,
            [
                ("floor: loop + a Python call doing nothing", noop, hits),
                ("floor: dict.get over the same keys (random)", table.get, hits),
                ("get: limedb", e.get, hits),
                ("get: rocksdict", rd.get, hits),
                ("get, 20 hot keys: limedb", e.get, hot),
                ("get, 20 hot keys: rocksdict", rd.get, hot),
                ("miss: limedb", e.get, misses),
                ("miss: rocksdict", rd.get, misses),
            ],
            args.rounds,
        )
        codes = {
            "put": put_codes,
            "get": bytecodes_per_op(e.get, hits[:2000]),
            "miss": bytecodes_per_op(e.get, misses[:2000]),
        }
        profiled("get (present key)", e.get, hits, args.top)
        profiled("get (missing key)", e.get, misses, args.top)
        levels = ", ".join(f"L{x['level']}:{x['files']}" for x in e.stats()["levels"] if x["files"])
        e.close()
        rd.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"CPU per operation in the calling thread, unprofiled (median of {args.rounds} rounds, "
        f"min-max; LimeDB tables {levels}):"
    )
    for label, values in rows.items():
        values = sorted(values)
        mid = values[len(values) // 2]
        print(f"  {label:<46} {mid:6.2f} us  ({values[0]:.2f}-{values[-1]:.2f})")
    print(
        "Python bytecodes per LimeDB operation (the loop's own included): "
        + ", ".join(f"{k} {v:.0f}" for k, v in codes.items())
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
