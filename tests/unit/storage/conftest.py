"""Fixtures for storage tests: engines over real directories, closed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from limedb.storage import Engine, EngineOptions

SMALL = dict(
    memtable_bytes=32 * 1024,
    l0_compaction_trigger=2,
    level_base_bytes=128 * 1024,
    target_file_bytes=32 * 1024,
    compaction_rate_bytes_per_s=0,
)


@pytest.fixture
def open_engine(tmp_path) -> Iterator[Callable[..., Engine]]:
    """Open engines in tmp_path (small sizes so flushes and compactions happen); closes them."""
    opened: list[Engine] = []

    def _open(path=None, **kw) -> Engine:
        opts = dict(SMALL)
        opts.update(kw.pop("options", {}))
        e = Engine.open(path or tmp_path / "db", EngineOptions(**opts), **kw)
        opened.append(e)
        return e

    yield _open
    for e in opened:
        e.close()
