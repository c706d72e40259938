"""Where the storage engine's CPU goes per put, get and miss (the figures behind bench_engine).

Writes --keys keys (16 B, 100 B values, engine defaults, durability none), waits for the flush
and compactions, then measures, in the calling thread's CPU time (`time.thread_time`, so time
spent waiting for a core on a busy machine is not counted): the CPU of a put, a get of a
present key and a get of a missing key, unprofiled; then the same operations under cProfile
(with the same clock) for the Python calls each makes and the functions with the most own
time. The put's background work (flush, table builds and compactions in worker processes) is
not in the writer's figure; bench_engine's per-CPU-second rows include it.

Not part of `make bench` (run_all.py runs bench_*.py only).

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

from limedb.storage import Engine, EngineOptions  # noqa: E402

VALUE = b"v" * 100


def cpu_us_per_op(fn: Callable[[bytes], object], keys: list[bytes]) -> float:
    started = time.thread_time()
    for k in keys:
        fn(k)
    return (time.thread_time() - started) / len(keys) * 1e6


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=300_000)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(1)
    keys = [rng.randbytes(16) for _ in range(args.keys)]
    sample = max(1, min(100_000, args.keys // 3))
    root = tempfile.mkdtemp(prefix="limedb-profile-engine-")
    print(
        f"profile_engine: {args.keys:,} keys, engine defaults, durability none; load average "
        f"{os.getloadavg()[0]:.1f} at the start"
    )
    try:
        e = Engine.open(os.path.join(root, "db"), EngineOptions(durability="none"))
        put = cpu_us_per_op(lambda k: e.put(k, VALUE), keys[sample:])
        profiled("put", lambda k: e.put(k, VALUE), keys[:sample], args.top)
        e.flush()
        while e.stats()["compaction_backlog_bytes"] > 0:
            time.sleep(0.05)
        hits = rng.sample(keys, sample)
        misses = [rng.randbytes(16) for _ in range(sample)]
        for k in hits:  # warm the block cache, as bench_engine does
            e.get(k)
        get, miss = cpu_us_per_op(e.get, hits), cpu_us_per_op(e.get, misses)
        profiled("get (present key)", e.get, hits, args.top)
        profiled("get (missing key)", e.get, misses, args.top)
        levels = ", ".join(f"L{x['level']}:{x['files']}" for x in e.stats()["levels"] if x["files"])
        e.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"CPU per operation in the calling thread, unprofiled: put {put:.2f} us, get "
        f"{get:.2f} us, miss {miss:.2f} us (tables {levels}); load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
