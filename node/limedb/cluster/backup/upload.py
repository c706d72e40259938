"""One node's part of a backup: a checkpoint of its engine, then each table uploaded to
`prefix/tables/<sha256>` unless the bucket already holds it (incremental), paced to the
node's streaming rate and run in its background budget so that clients keep their
throughput. The checkpoint is taken when the job starts (the cut); the upload follows."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from typing import Any, Protocol

from limedb.cluster.background import BackgroundBudget
from limedb.cluster.backup.progress import Pacer, Progress
from limedb.cluster.backup.store import ObjectStore, sha256_of
from limedb.hlc import HLC
from limedb.storage.block_cache import BlockCache
from limedb.storage.fs import RealFS
from limedb.storage.sstable import TableReader

log = logging.getLogger(__name__)

TABLE_SUFFIX = ".sst"


class Checkpointing(Protocol):
    hlc: HLC

    def checkpoint(self, path: str) -> Any: ...


def table_entries(path: str) -> int:
    """The entry count in a table's footer (only footer, index and filter are read)."""
    return TableReader(RealFS(), path, 0, BlockCache(0)).entries


class NodeUpload:
    """The checkpoint and upload of one backup on this node; `state` is running, done or
    failed (with `error`)."""

    def __init__(
        self,
        backup_id: str,
        store: ObjectStore,
        engine: Checkpointing,
        work_dir: str,
        pacer: Pacer,
        budget: BackgroundBudget,
    ) -> None:
        self.backup_id = backup_id
        self.store = store
        self.engine = engine
        self.dir = os.path.join(work_dir, backup_id)
        self.pacer = pacer
        self.budget = budget
        self.state = "running"
        self.error: str | None = None
        self.cut_hlc = 0
        self.tables: list[dict[str, Any]] = []
        self.progress = Progress()
        self.task: asyncio.Task | None = None

    async def checkpoint(self) -> None:
        """The cut: every write this node acknowledged before now is in the checkpoint."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        await asyncio.to_thread(self.engine.checkpoint, self.dir)
        self.cut_hlc = self.engine.hlc.last
        names = sorted(n for n in os.listdir(self.dir) if n.endswith(TABLE_SUFFIX))
        self._names = names
        self.progress.files_total = len(names)
        self.progress.bytes_total = sum(os.path.getsize(self._path(n)) for n in names)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    async def upload(self) -> None:
        try:
            for name in self._names:
                self.tables.append(await self._upload_table(self._path(name)))
            self.state = "done"
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's status
            log.warning("backup %s: upload failed: %s", self.backup_id, exc)
            self.error = str(exc)
            self.state = "failed"
        finally:
            self.progress.finished = time.monotonic()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _upload_table(self, path: str) -> dict[str, Any]:
        size = os.path.getsize(path)
        sha, entries = await asyncio.to_thread(lambda: (sha256_of(path), table_entries(path)))
        key = self.store.location.table_key(sha)
        if await asyncio.to_thread(self.store.size_of, key) == size:
            self.progress.files_skipped += 1
        else:

            def put() -> None:
                self.store.put_file(key, path, size, self._paced)

            await self.budget.run(lambda: asyncio.to_thread(put))
            self.progress.bytes_uploaded += size
        self.progress.files_done += 1
        self.progress.bytes_done += size
        self.progress.keys += entries
        return {"sha256": sha, "size": size, "entries": entries}

    def _paced(self, nbytes: int) -> None:
        self.pacer.pace(nbytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.backup_id,
            "state": self.state,
            "error": self.error,
            "cut_hlc": self.cut_hlc,
            "tables": self.tables if self.state == "done" else [],
            "progress": self.progress.to_json(),
        }
