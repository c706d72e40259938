"""The clock-skew tooling does what the skew tests rely on: libfaketime offsets a real Python
process's wall clock (time.time_ns, CLOCK_REALTIME) and not its monotonic clock, the offset
changes while the process runs (steps and drifts), and time.sleep keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cluster import wait_for
from support.faketime import FakeClock

pytestmark = pytest.mark.faketime

# Answers every line it reads with its clocks, after a time.sleep (which must keep working).
PROBE = r"""
import json, sys, time
for _ in sys.stdin:
    time.sleep(0.01)
    print(json.dumps({"wall": time.time_ns() / 1e9, "realtime": time.clock_gettime(
        time.CLOCK_REALTIME), "mono": time.monotonic()}), flush=True)
"""


class Probe:
    """A Python process on `clock` reporting its clocks; compared with this process's own."""

    def __init__(self, clock: FakeClock) -> None:
        env = {"PATH": "/usr/bin:/bin", **clock.env()}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def offsets(self) -> tuple[float, float, float]:
        """(time_ns offset, CLOCK_REALTIME offset, monotonic offset) from this process's clocks."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"probe died: exit {self.proc.poll()}"
        seen = json.loads(line)
        real_wall, real_mono = time.time(), time.monotonic()
        return seen["wall"] - real_wall, seen["realtime"] - real_wall, seen["mono"] - real_mono

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_wall_clock_offset_changes_at_run_time_and_monotonic_stays_real(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path / "offset", -2.0)
    probe = Probe(clock)
    try:

        def near(wall: float) -> bool:
            w, rt, mono = probe.offsets()
            return abs(w - wall) < 0.3 and abs(rt - wall) < 0.3 and -0.3 < mono <= 0.05

        wait_for(lambda: near(-2.0), 10, "the probe 2 s behind, monotonic real")
        clock.set(60.0)
        wait_for(lambda: near(60.0), 10, "the probe stepped to 60 s ahead")
        clock.set(-60.0)
        wait_for(lambda: near(-60.0), 10, "the probe stepped to 60 s behind")
        clock.set(0.0)
        clock.drift(2.0)  # fast, so that the test sees it in a second
        wait_for(lambda: probe.offsets()[0] > 1.0, 10, "the probe drifted ahead")
        clock.stop_drift()
        assert clock.offset_s > 1.0
        wait_for(lambda: near(clock.offset_s), 10, "the drift stopped where it was")
    finally:
        clock.stop_drift()
        probe.close()
