"""Out of file descriptors under the engine (EMFILE): like a full disk, the write that meets
it is refused and writes resume once descriptors are free, instead of the engine failing
until a restart. Found by the nemesis (seed 3): an fd limit struck during a flush. The refusal
says what ran out (OutOfDescriptorsError, "out of file descriptors"), never "disk full": the
disk has room, and clients hear an overload (503), not a 507."""

from __future__ import annotations

import time

from limedb.storage import Engine, EngineOptions
from limedb.storage.errors import DiskFullError, OutOfDescriptorsError
from support.descriptors import DescriptorLimitedFS

from .test_crash_model import OPTIONS


def resume_and_check(engine: Engine, fs: DescriptorLimitedFS, acked: dict[bytes, bytes]) -> None:
    """Descriptors are free again: a write succeeds within 10 s (the flush's backoff), and
    every acknowledged write reads back after a flush."""
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


def test_writes_out_of_descriptors_never_fail_the_engine_and_nothing_acknowledged_is_lost():
    fs = DescriptorLimitedFS()
    opts = EngineOptions(durability="sync", **{**OPTIONS, "background_threads": True})
    engine = Engine.open("/db", opts, fs=fs)
    acked = {b"before": b"1"}
    engine.put(b"before", b"1")
    fs.exhausted = True
    refusals: list[DiskFullError] = []
    for i in range(2_000):  # enough to need new logs and tables many times over
        key = b"k%05d" % i
        try:
            engine.put(key, b"x" * 100)
        except DiskFullError as exc:
            refusals.append(exc)  # refused: fine, as long as the engine lives
            continue
        acked[key] = b"x" * 100
    assert all(isinstance(exc, OutOfDescriptorsError) for exc in refusals), refusals[:1]
    resume_and_check(engine, fs, acked)
    engine.close()


def test_a_flush_out_of_descriptors_refuses_writes_as_out_of_descriptors_not_disk_full():
    """The flush cannot create its table (EMFILE) while logs still open: once the memtable is
    full again the writes are refused, each refusal naming what ran out, the health saying
    "out of descriptors" (not "disk full"); writes resume once a table can be created, and
    nothing acknowledged is lost."""
    fs = DescriptorLimitedFS()
    fs.only = ".sst"
    opts = EngineOptions(durability="sync", **{**OPTIONS, "background_threads": True})
    engine = Engine.open("/db", opts, fs=fs)
    acked: dict[bytes, bytes] = {}
    fs.exhausted = True
    refusals: list[DiskFullError] = []
    for i in range(2_000):
        key = b"k%05d" % i
        try:
            engine.put(key, b"x" * 100)
        except DiskFullError as exc:
            refusals.append(exc)
            if len(refusals) >= 20:
                break
            continue
        acked[key] = b"x" * 100
    assert refusals, "no write was refused while no table could be created"
    for exc in refusals:
        assert isinstance(exc, OutOfDescriptorsError), repr(exc)
        assert str(exc).startswith("out of file descriptors: "), str(exc)
        assert "Too many open files" in str(exc), str(exc)
    status = engine.disk_status()
    assert status["out_of_descriptors"] and not status["disk_full"], status
    assert status["disk_full_refused_writes"] >= len(refusals), status
    resume_and_check(engine, fs, acked)
    assert not engine.disk_status()["out_of_descriptors"]
    engine.close()
