"""The gossip generation at which this node first heard each other node, kept across its
restarts (data_dir/heard.json).

A node back on an empty disk asks its seeds whether they heard it in an earlier run
(limedb.cluster.rejoin). Held only in memory, that answer was lost whenever the seed itself
restarted after the member went down: a whole cluster coming back at once (a power loss, a
node pool replaced) with one volume gone would have taken the member back as a fresh node
serving empty reads. The first generation of each node is written here once, when it is first
heard, so a restarted seed still knows.

The generation is kept, not just the name: a seed's gossip can reach a late founder of a new
cluster before that founder asks (its RPC server is up first), and only "first heard at an
older generation than the asking run's" tells an earlier run from the asking one.

Writes happen off the event loop, one at a time, coalescing what arrives meanwhile; a write
that fails (a full disk) is logged and retried with the next node heard or at the next start:
nothing here may stop gossip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from limedb.cluster.record_file import RecordFile

log = logging.getLogger(__name__)

HEARD_FILE = "heard.json"


def _decode(data: Mapping[str, Any]) -> dict[str, int]:
    nodes = data.get("first_generation")
    if not isinstance(nodes, Mapping):
        raise ValueError("first_generation must be an object")
    out: dict[str, int] = {}
    for node_id, generation in nodes.items():
        if type(generation) is not int or generation < 0:
            raise ValueError(f"generation of {node_id!r} must be a non-negative integer")
        out[node_id] = generation
    return out


def _encode(first: dict[str, int]) -> dict[str, Any]:
    return {"first_generation": dict(sorted(first.items()))}


class HeardStore:
    """data_dir/heard.json: node id -> the generation it was first heard at."""

    def __init__(self, data_dir: str | Path) -> None:
        self._file = RecordFile(Path(data_dir) / HEARD_FILE, "heard record", _decode, _encode)
        self._saved: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    @property
    def path(self) -> Path:
        return self._file.path

    def load(self) -> dict[str, int]:
        """What earlier runs heard: empty without a file, and with an unreadable one (logged;
        the next save replaces it). Unlike the ring record, nothing about ownership rests on
        it: without it a member back on an empty disk is only not replaced automatically."""
        try:
            self._saved = self._file.load() or {}
        except (OSError, ValueError) as exc:
            log.warning("%s; the nodes heard before this run are forgotten", exc)
            self._saved = {}
        return dict(self._saved)

    def membership_hooks(self) -> dict[str, Any]:
        """Membership's keyword arguments: what earlier runs heard, and the hook to record
        what this run hears first."""
        return {"first_generations": self.load(), "on_first_heard": self.first_heard}

    def first_heard(self, node_id: str, generation: int) -> None:
        """Record a node heard for the first time in this run (Membership's hook, called in
        the event loop, where gossip is applied); saved in the background. A node an earlier
        run heard keeps its older generation."""
        if node_id in self._saved or node_id in self._pending:
            return
        self._pending[node_id] = generation
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._save(), name="heard-save")

    async def flush(self) -> None:
        """Wait for the save in flight, if any (at shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _save(self) -> None:
        while self._pending:
            batch = dict(self._pending)
            merged = {**batch, **self._saved}
            if not await asyncio.to_thread(self._write, merged):
                return  # retried with the next node heard, or at the next start
            self._saved = merged
            for node_id in batch:
                self._pending.pop(node_id, None)

    def _write(self, merged: dict[str, int]) -> bool:
        try:
            self._file.save(merged)
        except OSError as exc:
            log.warning("could not record the nodes heard in %s: %s", self.path, exc)
            return False
        return True
