"""The closed-loop 50/50 load bench_peers.py drives each peer with, and what it measures.

`in_flight` workers each repeat: pick a key uniformly from k0..k{keys-1}, then a read or (with
probability one half) a write of a 100-byte value, and wait for the answer before the next.
That is wrk's model (one request per connection in flight) as bench_cluster.py drives LimeDB.
Latency is from issuing a request to its answer, in this process; the server CPU comes from the
server processes' /proc/PID/stat (peer_configs.stat_cpu_ticks), the client's own CPU from
time.process_time() of this process, so neither is counted as the other.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peer_configs import cpu_us_per_op, percentile, stat_cpu_ticks

VALUE = b"v" * 100


@dataclass
class LoadResult:
    ops_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    server_cpu_us_per_op: float
    client_cpu_us_per_op: float


def server_ticks(pids: list[int]) -> int:
    """utime + stime of the server processes so far, in clock ticks."""
    return sum(stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Terminate every server process still running, then wait for each (kill after 30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Tally:
    """Latencies and errors of the operations that completed inside the measured window."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.lock = threading.Lock()

    def add(self, seconds: float, ok: bool) -> None:
        with self.lock:
            if ok:
                self.latencies.append(seconds)
            else:
                self.errors += 1


def measure(
    run: Callable[[float, Tally], None], duration_s: float, server_pids: list[int]
) -> LoadResult:
    """Call `run(deadline, tally)` (which drives the load until the monotonic `deadline`) and
    turn what it recorded into figures, with the servers' and this client's CPU per op."""
    tally = Tally()
    clk = os.sysconf("SC_CLK_TCK")
    ticks = server_ticks(server_pids)
    client = time.process_time()
    started = time.monotonic()
    run(started + duration_s, tally)
    elapsed = time.monotonic() - started
    client_s = time.process_time() - client
    ticks_after = server_ticks(server_pids)
    done = len(tally.latencies)
    ordered = sorted(tally.latencies)
    return LoadResult(
        ops_s=done / elapsed,
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        errors=tally.errors,
        requests=done,
        server_cpu_us_per_op=cpu_us_per_op(ticks, ticks_after, clk, done),
        client_cpu_us_per_op=client_s / max(done, 1) * 1e6,
    )


def key_chooser(keys: int, seed: int) -> Callable[[], tuple[bytes, bool]]:
    """A generator of (key, is_write) pairs: uniform keys, writes with probability one half."""
    rng = random.Random(seed)
    rand, randrange = rng.random, rng.randrange

    def choose() -> tuple[bytes, bool]:
        return b"k%d" % randrange(keys), rand() < 0.5

    return choose
