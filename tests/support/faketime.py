"""Real clock offsets for node processes: Debian's libfaketime preloaded, reading its offset from
a file that a test rewrites while the node runs (a step, or a slow drift).

Only the wall clock (CLOCK_REALTIME: `time.time_ns()`) is offset; CLOCK_MONOTONIC stays real, as
it does on a machine whose NTP steps the clock. libfaketime re-reads the file on every clock call
(FAKETIME_NO_CACHE, ~10 us each), so a change takes effect at once. A small preload built from
`faketime_sleep.c` keeps waits on the monotonic clock away from libfaketime 0.9.10, which
breaks Python 3.11's `time.sleep()` and slowed a node's writes tenfold through the GIL's
condition variable (with it, a faked node serves about as fast as a plain one).

    clock = skew(node, -2.0)   # before node.start(); the node then runs 2 s behind
    clock.set(+60)             # a step while it runs
    clock.drift(0.01)          # then gains 10 ms every second until the next set()
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from support.cluster import Node

SLEEP_FIX_SOURCE = Path(__file__).with_name("faketime_sleep.c")
LIBRARY_PATTERN = "/usr/lib/*/faketime/libfaketime.so.1"
DRIFT_STEP_S = 0.1


def libfaketime() -> Path:
    """The installed libfaketime preload library."""
    found = sorted(glob.glob(LIBRARY_PATTERN))
    if not found:
        raise RuntimeError(
            f"libfaketime not found ({LIBRARY_PATTERN}): run `bash scripts/system-deps.sh`"
        )
    return Path(found[0])


def sleep_fix() -> Path:
    """The sleep-fix preload, compiled once per source version (cached in the temp dir)."""
    source = SLEEP_FIX_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "limedb-faketime" / f"sleepfix-{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(SLEEP_FIX_SOURCE)],
            check=True,
            capture_output=True,
        )
        os.replace(partial, target)  # concurrent builders each install a complete file
    return target


def _format(offset_s: float) -> str:
    """libfaketime's relative offset syntax: a signed number of seconds."""
    return "+0" if abs(offset_s) < 0.0005 else f"{offset_s:+.3f}"


class FakeClock:
    """The wall-clock offset of the processes started with `env()`, in seconds."""

    def __init__(self, path: Path, offset_s: float = 0.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._offset_s = 0.0
        self._drifting: threading.Event | None = None
        self._drift_thread: threading.Thread | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set(offset_s)

    @property
    def offset_s(self) -> float:
        return self._offset_s

    def env(self) -> dict[str, str]:
        """The environment that runs a process on this clock."""
        return {
            "LD_PRELOAD": f"{sleep_fix()}:{libfaketime()}",
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",  # file times stay real: only the clock is skewed
        }

    def set(self, offset_s: float) -> None:
        """Step the clock to `offset_s` from real time (stops a drift)."""
        self.stop_drift()
        self._write(offset_s)

    def step(self, delta_s: float) -> None:
        """Move the clock by `delta_s` from where it is now (stops a drift)."""
        self.set(self._offset_s + delta_s)

    def drift(self, rate: float) -> None:
        """From now on the clock gains `rate` seconds per real second (negative: loses),
        in steps of DRIFT_STEP_S, until `set`, `step` or `stop_drift`."""
        self.stop_drift()
        stop = threading.Event()
        start_offset, start = self._offset_s, time.monotonic()

        def run() -> None:
            while not stop.wait(DRIFT_STEP_S):
                self._write(start_offset + rate * (time.monotonic() - start))

        self._drifting = stop
        self._drift_thread = threading.Thread(target=run, name="faketime-drift", daemon=True)
        self._drift_thread.start()

    def stop_drift(self) -> None:
        if self._drifting is not None and self._drift_thread is not None:
            self._drifting.set()
            self._drift_thread.join()
        self._drifting = self._drift_thread = None

    def _write(self, offset_s: float) -> None:
        # Renamed into place, so a clock call never reads a half-written file.
        with self._lock:
            partial = self.path.with_name(self.path.name + ".tmp")
            partial.write_text(_format(offset_s) + "\n")
            os.replace(partial, self.path)
            self._offset_s = offset_s


def skew(node: Node, offset_s: float = 0.0) -> FakeClock:
    """Run `node` on a fake clock `offset_s` seconds from real time, from its next start on;
    the offset file lives in the node's data directory."""
    clock = FakeClock(node.data_dir / "faketime-offset", offset_s)
    node.env.update(clock.env())
    return clock
