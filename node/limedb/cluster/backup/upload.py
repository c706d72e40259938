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
from limedb.cluster.backup.store import ObjectStore

log = logging.getLogger(__name__)


class CheckpointTable(Protocol):
    name: str
    size: int
    sha256: str
    entries: int


class Checkpoint(Protocol):
    """What limedb.storage's `Engine.checkpoint` returns (storage/checkpoint.py)."""

    dir: str
    tables: tuple[CheckpointTable, ...]
    hlc: int


class Checkpointing(Protocol):
    def checkpoint(self, dest: str) -> Checkpoint: ...


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
        self._tables: tuple[CheckpointTable, ...] = ()
        self.progress = Progress()
        self.task: asyncio.Task | None = None

    async def checkpoint(self) -> None:
        """The cut: every write this node acknowledged before now is in the checkpoint."""
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.dirname(self.dir), exist_ok=True)
        checkpoint = await asyncio.to_thread(self.engine.checkpoint, self.dir)
        self.cut_hlc = checkpoint.hlc
        self._tables = checkpoint.tables
        self.progress.files_total = len(checkpoint.tables)
        self.progress.bytes_total = sum(t.size for t in checkpoint.tables)

    async def upload(self) -> None:
        try:
            for table in self._tables:
                await self._upload_table(table)
                self.tables.append(
                    {"sha256": table.sha256, "size": table.size, "entries": table.entries}
                )
            self.state = "done"
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's status
            log.warning("backup %s: upload failed: %s", self.backup_id, exc)
            self.error = str(exc)
            self.state = "failed"
        finally:
            self.progress.finished = time.monotonic()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _upload_table(self, table: CheckpointTable) -> None:
        key = self.store.location.table_key(table.sha256)
        if await asyncio.to_thread(self.store.size_of, key) == table.size:
            self.progress.files_skipped += 1
        else:
            path = os.path.join(self.dir, table.name)

            def put() -> None:
                self.store.put_file(key, path, table.size, self._paced)

            await self.budget.yield_to_clients()
            await self.budget.run(lambda: asyncio.to_thread(put))
            self.progress.bytes_uploaded += table.size
        self.progress.files_done += 1
        self.progress.bytes_done += table.size
        self.progress.keys += table.entries

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
