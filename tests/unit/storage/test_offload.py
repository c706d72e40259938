"""Flushes and compactions run in worker processes give the same data, and workers never outlive
the engine (closed, or its process killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from limedb.storage import Engine, EngineOptions, compaction
from support.wait import wait_for

BIG = dict(
    durability="none",
    memtable_bytes=1536 * 1024,  # above the 1 MiB threshold for offloading
    l0_compaction_trigger=2,
    level_base_bytes=4 << 20,
    target_file_bytes=1 << 20,
    compaction_rate_bytes_per_s=0,
)


def _children(pid: int) -> list[int]:
    """Child processes of every thread of `pid` (workers are started by background threads)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_offloaded_flushes_and_compactions_keep_every_value(tmp_path):
    e = Engine.open(tmp_path / "db", EngineOptions(**BIG))
    try:
        for i in range(40_000):
            e.put(b"key%06d" % i, b"%06d" % i + b"v" * 100)
        for i in range(0, 40_000, 4):
            e.delete(b"key%06d" % i)
        e.flush()
        wait_for(lambda: e.stats()["compaction_backlog_bytes"] == 0, 30, "compactions to drain")
        assert e._pool is not None and e._offload, "the work did not run in worker processes"
        assert e.stats()["compactions"] >= 1
        for i in range(0, 40_000, 97):
            want = None if i % 4 == 0 else b"%06d" % i + b"v" * 100
            assert e.get(b"key%06d" % i) == want
        workers = e._pool.pids()
        assert workers and all(p in _children(os.getpid()) for p in workers)
    finally:
        e.close()
    wait_for(lambda: not any(_alive(p) for p in workers), 30, "offload workers to exit")
    with Engine.open(tmp_path / "db", EngineOptions(**BIG)) as e:
        assert len(e.scan(None, None)) == 30_000


def test_a_memtable_shipped_to_its_worker_while_it_fills_flushes_to_its_last_versions(tmp_path):
    """Staging (flush.py): the worker gets each key again after each of its writes, so the
    table holds the last version of every key, overwrites, deletes and expiry times included."""
    opts = EngineOptions(**{**BIG, "memtable_bytes": 4 << 20})  # staged from 1 MiB on
    e = Engine.open(tmp_path / "db", opts)
    want: dict[bytes, bytes | None] = {}
    try:
        for batch in range(12):  # 8,000 new keys, then half of them again: ~4 memtables
            keys = [b"key%06d" % ((batch * 8000 + i) * 7919 % 1_000_000) for i in range(8000)]
            for i, key in enumerate(keys):
                want[key] = b"%06d" % i + b"v" * 100
                e.put(key, want[key])
            for i, key in enumerate(keys[::2]):
                if i % 5 == 0:
                    e.delete(key)
                    want[key] = None
                else:
                    want[key] = b"again %06d" % i + b"v" * 100
                    e.put(key, want[key], expires_at_ms=None if i % 3 else 2**62)
        e.flush()
        st = e.stats()
        assert e._offload, "a staged flush fell back to building in this process"
        assert st["staged_flushes"] >= 1, st
        for key, value in want.items():
            assert e.get(key) == value
    finally:
        e.close()
    with Engine.open(tmp_path / "db", EngineOptions(**{**BIG, "offload_workers": 0})) as e:
        for key, value in want.items():
            assert e.get(key) == value


def test_a_big_range_purge_rewrites_its_tables_in_a_worker_not_in_this_process(
    tmp_path, monkeypatch
):
    in_process: list[compaction.Compaction] = []
    real_run = compaction.run

    def run(c, *args, **kwargs):
        if c.purge:
            in_process.append(c)
        return real_run(c, *args, **kwargs)

    monkeypatch.setattr(compaction, "run", run)
    e = Engine.open(tmp_path / "db", EngineOptions(**BIG))
    try:
        for i in range(40_000):
            e.put(b"key%06d" % i, b"%06d" % i + b"v" * 100)
        e.flush()
        wait_for(lambda: e.stats()["compaction_backlog_bytes"] == 0, 30, "compactions to drain")
        assert e.purge_range(b"key010000", b"key030000") >= 1
        assert in_process == [], "the purge rewrote its tables in the engine's process"
        assert e._offload, "offloading failed and was turned off"
        keys = [k for k, _ in e.scan(None, None)]
        assert len(keys) == 20_000
        assert keys[9_999] == b"key009999" and keys[10_000] == b"key030000"
    finally:
        e.close()
    with Engine.open(tmp_path / "db", EngineOptions(**BIG)) as e:
        assert e.get(b"key020000") is None and e.get(b"key030000") is not None


CHILD = """
import os, sys
from limedb.storage import Engine, EngineOptions
e = Engine.open(sys.argv[1], EngineOptions(**eval(sys.argv[2])))
for i in range(30_000):
    e.put(b"key%06d" % i, b"v" * 100)
e.flush()
print(" ".join(map(str, e._pool.pids())), flush=True)
import threading; threading.Event().wait()
"""


@pytest.mark.process
def test_workers_die_with_a_killed_engine_process(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "db"), repr(BIG)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()
        workers = sorted({int(p) for p in line.split()})
        assert workers, proc.stderr.read() if proc.poll() is not None else "no worker started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not any(_alive(p) for p in workers), 10, lambda: f"workers {workers} to exit")
