"""Out of file descriptors under the engine (EMFILE): like a full disk, the write that meets
it is refused and writes resume once descriptors are free, instead of the engine failing
until a restart. Found by the nemesis (seed 3): an fd limit struck during a flush."""

from __future__ import annotations

import errno
import time

from limedb.storage import CrashableMemFS, Engine, EngineOptions
from limedb.storage.errors import DiskFullError

from .test_crash_model import OPTIONS


class DescriptorLimitedFS(CrashableMemFS):
    """Creating a file fails with EMFILE while `exhausted` is set."""

    exhausted = False

    def create(self, path: str):
        if self.exhausted:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().create(path)


def test_writes_out_of_descriptors_never_fail_the_engine_and_nothing_acknowledged_is_lost():
    fs = DescriptorLimitedFS()
    opts = EngineOptions(durability="sync", **{**OPTIONS, "background_threads": True})
    engine = Engine.open("/db", opts, fs=fs)
    acked = {b"before": b"1"}
    engine.put(b"before", b"1")
    fs.exhausted = True
    for i in range(2_000):  # enough to need new logs and tables many times over
        key = b"k%05d" % i
        try:
            engine.put(key, b"x" * 100)
        except DiskFullError:
            continue  # refused: fine, as long as the engine lives
        acked[key] = b"x" * 100
    fs.exhausted = False
    deadline = time.monotonic() + 10
    while True:
        try:
            engine.put(b"after", b"2")
            break
        except DiskFullError:
            assert time.monotonic() < deadline, "writes did not resume"
            time.sleep(0.02)
    acked[b"after"] = b"2"
    engine.flush()
    assert {key: engine.get(key) for key in acked} == acked
    engine.close()
