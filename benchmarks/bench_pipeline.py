"""RESP pipelining benchmark: `redis-benchmark -P 16` SET against `-P 1` on one LimeDB node.

The node runs with its default durability (`sync`: fsync before acknowledging, group commit).
The listener starts the independent commands of a pipeline together (single-key commands on
distinct keys, docs/redis.md "Pipelining"), so a pipeline's 16 SETs share fsyncs instead of
waiting for 16 in turn. Reported, for `-P 1` and `-P 16` (interleaved, best of --repeat):
requests/s, the server's CPU microseconds per request, and the ratio of the rates, with random
keys (`-r`, so that a pipeline's keys are distinct, as in a real bulk load) and with
redis-benchmark's default single key (every SET of a pipeline to the same key: plain SETs of
one key start together too, stamped in order). Goal: the `-P 16` SET rate >= 3x the `-P 1`
rate, in both.

Every server is a real process; with two or more cores the node is pinned to CPU 0 and
redis-benchmark to CPU 1.

    .venv/bin/python benchmarks/bench_pipeline.py [--requests 40000] [--clients 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_resp import LIMEDB, cpu_seconds, free_port, pinned, stop, wait_for_port

GOAL_RATIO = 3.0
HOST = "127.0.0.1"


def start_node(workdir: Path, durability: str) -> tuple[subprocess.Popen, int]:
    port, resp_port = free_port(), free_port()
    env = {
        **os.environ,
        "LIMEDB_RESP_PORT": str(resp_port),
        "LIMEDB_DURABILITY": durability,
        "LIMEDB_LOG_LEVEL": "warning",
    }
    args = [LIMEDB, "serve", "--host", HOST, "--port", str(port), "--data-dir", str(workdir)]
    with open(workdir.with_suffix(".log"), "ab") as log:
        proc = subprocess.Popen(pinned(args, 0), env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(HOST, resp_port, proc, "limedb node")
    return proc, resp_port


def run_set(port: int, pid: int, requests: int, clients: int, pipeline: int, random_keys: bool):
    """(SET requests per second, server CPU microseconds per request)."""
    args = ["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(requests),
            "-c", str(clients), "-P", str(pipeline), "-t", "set", "--csv"]  # fmt: skip
    if random_keys:
        args += ["-r", "1000000"]
    before = cpu_seconds([pid])
    done = subprocess.run(pinned(args, 1), capture_output=True, text=True, timeout=1800)
    cpu = cpu_seconds([pid]) - before
    rows = {row[0]: row[1] for row in csv.reader(io.StringIO(done.stdout)) if len(row) > 1}
    if done.returncode != 0 or "SET" not in rows:
        raise RuntimeError(f"redis-benchmark failed:\n{done.stdout}\n{done.stderr}")
    return float(rows["SET"]), cpu / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept")
    parser.add_argument("--durability", default="sync", choices=("sync", "periodic", "none"))
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark not found: run `make system-deps`", file=sys.stderr)
        return 2
    best: dict[tuple[bool, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        proc, port = start_node(Path(tmp) / "node", args.durability)
        try:
            for random_keys in (True, False):
                for _ in range(args.repeat):
                    for pipeline in (1, 16):
                        rps, cpu = run_set(
                            port, proc.pid, args.requests, args.clients, pipeline, random_keys
                        )
                        old = best.get((random_keys, pipeline), (0.0, float("inf")))
                        best[(random_keys, pipeline)] = (max(old[0], rps), min(old[1], cpu))
        finally:
            stop([proc])

    print(
        f"\nredis-benchmark -t set -n {args.requests} -c {args.clients} against one node "
        f"(durability {args.durability}), best of {args.repeat}"
    )
    print(f"{'keys':<22}{'-P 1 SET/s':>12}{'-P 16 SET/s':>13}{'ratio':>7}{'us/req P1':>11}"
          f"{'us/req P16':>12}")  # fmt: skip
    for random_keys, label in ((True, "random (-r 1000000)"), (False, "one key (default)")):
        (rps1, cpu1), (rps16, cpu16) = best[(random_keys, 1)], best[(random_keys, 16)]
        print(
            f"{label:<22}{rps1:>12,.0f}{rps16:>13,.0f}{rps16 / rps1:>7.2f}{cpu1:>11.1f}"
            f"{cpu16:>12.1f}"
        )
    ratios = {keys: best[(keys, 16)][0] / best[(keys, 1)][0] for keys in (True, False)}
    verdict = "met" if min(ratios.values()) >= GOAL_RATIO else "NOT met"
    print(
        f"\ngoal: -P 16 SET >= {GOAL_RATIO:g}x -P 1: {verdict} (random keys "
        f"{ratios[True]:.2f}x, one key {ratios[False]:.2f}x)"
    )
    print(f"load average after the run: {os.getloadavg()[0]:.1f} (2 cores: above 2 means shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
