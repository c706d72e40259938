"""Disk full, for real: a node's data directory on a small tmpfs (tests/support/diskfull.py)
that a ballast file fills and frees while the node runs."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import diskfull

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[diskfull.SmallDisk]:
    diskfull.sweep()
    disk = diskfull.SmallDisk(tmp_path / "data", 4 << 20)
    with disk:
        yield disk
    assert not diskfull.is_mounted(disk.path)


def test_small_disk_fills_and_frees(small_disk: diskfull.SmallDisk) -> None:
    assert diskfull.is_mounted(small_disk.path)
    assert small_disk.free_bytes() > 3 << 20
    small_disk.fill()
    assert small_disk.free_bytes() == 0
    probe = small_disk.path / "probe"
    with pytest.raises(OSError) as refused, open(probe, "wb") as f:
        f.write(os.urandom(8192))
        f.flush()
    assert refused.value.errno == errno.ENOSPC
    small_disk.free()
    assert small_disk.free_bytes() > 3 << 20
    probe.write_bytes(os.urandom(8192))
    small_disk.fill(leave_bytes=1 << 20)
    assert 1 << 20 <= small_disk.free_bytes() <= (1 << 20) + (64 << 10)
