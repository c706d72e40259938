"""A flushed memtable is freed in chunks only when nothing else holds it: a snapshot or a
reader's view that still shares it keeps every entry."""

from __future__ import annotations

from limedb.storage import Engine, EngineOptions
from limedb.storage.memtable import Memtable


def _filled(n: int) -> Memtable:
    m = Memtable()
    for i in range(n):
        m.apply(b"k%06d" % i, (i + 1, b"v%d" % i, 0, 0))
    return m


def test_an_unshared_flushed_memtable_is_freed_entirely():
    m = _filled(5000)  # more than one chunk
    m.as_frozen()  # a frozen view nobody else holds does not count as a sharer
    released = m.release()  # called as the engine does (`assert m.release()` binds a method)
    assert released is True
    assert len(m) == 0 and m.size == 0


def test_a_shared_memtable_keeps_every_entry():
    m = _filled(3000)
    frozen = m.as_frozen()
    released = m.release()
    assert released is False
    assert [k for k, _ in frozen.items(None, None)] == [b"k%06d" % i for i in range(3000)]
    lookup = m.data.get
    del frozen
    released = m.release()
    assert released is False
    assert lookup(b"k000042") == (43, b"v42", 0, 0)


def test_a_snapshot_taken_before_a_flush_still_reads_the_flushed_memtable(tmp_path):
    opts = EngineOptions(durability="none", memtable_bytes=4096, background_threads=False)
    with Engine.open(tmp_path / "db", opts) as e:
        i = 0
        while e.stats()["immutable_memtable_bytes"] == 0:  # fill until the memtable is frozen
            e.put(b"key%05d" % i, b"x" * 50)
            i += 1
        with e.snapshot() as snap:
            e.flush()  # installs the frozen memtable as a table while the snapshot shares it
            assert [k for k, _ in snap.scan(None, None)] == [b"key%05d" % j for j in range(i)]
        assert len(e.scan(None, None)) == i
