"""SIGKILL of a real process writing with 32 concurrent writers loses no acknowledged write.

A child process (kill9_writer.py) writes in `sync` mode and prints every acknowledged put; the
test kills it with SIGKILL at a random moment, reopens the directory and checks that every key
reads back its last acknowledged value, or a later one from the same writer (a write can be
durable before its acknowledgement is printed), never an older one. Repeated 20 times on the
same directory, so each round also recovers from the previous kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from limedb.storage import Engine, EngineOptions

pytestmark = pytest.mark.process

CHILD = Path(__file__).with_name("kill9_writer.py")
ROUNDS = 20
OPTIONS = dict(
    durability="sync",
    memtable_bytes=64 * 1024,  # small: kills also land during flushes and compactions
    l0_compaction_trigger=2,
    level_base_bytes=256 * 1024,
    target_file_bytes=64 * 1024,
    compaction_rate_bytes_per_s=0,
)


def _run_and_kill(path: Path, start: int, rng: random.Random) -> dict[bytes, int]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(start), json.dumps(OPTIONS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: dict[bytes, int] = {}
    lines: list[bytes] = []
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"ready\n", (first, proc.stderr.read() if proc.poll() is not None else b"")
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        # Kill at a random moment, but only once the writers are really writing.
        while len(lines) < 50 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    for line in lines:
        if not line.endswith(b"\n"):
            continue  # torn by the kill: never fully acknowledged to us
        t, key, counter = line.split()
        acked[key] = max(acked.get(key, 0), int(counter))
    assert acked, "the child acknowledged no write before it was killed"
    return acked


def test_sigkill_during_32_concurrent_sync_writers_never_loses_an_acknowledged_write(tmp_path):
    path = tmp_path / "db"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    expected: dict[bytes, int] = {}
    start = 0
    total_acked = 0
    for _ in range(ROUNDS):
        acked = _run_and_kill(path, start, rng)
        total_acked += len(acked)
        expected.update({k: max(v, expected.get(k, 0)) for k, v in acked.items()})
        with Engine.open(path, EngineOptions(**OPTIONS)) as engine:
            for key, counter in expected.items():
                value = engine.get(key)
                assert value is not None, f"acknowledged key {key!r} lost after SIGKILL"
                t, got, _ = value.split(b":")
                assert int(t) == int(key[1:3])
                assert int(got) >= counter, (
                    f"{key!r} went back in time: acknowledged {counter}, read {int(got)}"
                )
            start = max(int(v.split(b":")[1]) for _, v in engine.scan(None, None)) + 1
    print("acknowledged keys per round:", total_acked // ROUNDS, "keys:", len(expected))
    assert total_acked >= ROUNDS
