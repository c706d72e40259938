"""Hints on a full disk: the hints engine refuses, the hint is kept in memory and replayed in
order with the stored ones; a delivered hint whose delete finds no room is kept, not lost."""

from __future__ import annotations

import asyncio

from limedb.cluster.hints import HintStore
from limedb.cluster.replica import Mutation
from limedb.storage import CrashableMemFS, Engine, EngineOptions
from support.wait import wait_for_async


class Target:
    def __init__(self) -> None:
        self.received: list[tuple[str, Mutation]] = []
        self.down = False

    async def deliver(self, node: str, mutation: Mutation) -> None:
        if self.down:
            raise ConnectionRefusedError("replica down")
        self.received.append((node, mutation))


def _engine(fs: CrashableMemFS) -> Engine:
    return Engine.open("/hints", EngineOptions(durability="sync"), fs=fs)


def test_hints_refused_by_a_full_disk_are_kept_in_memory_and_replayed() -> None:
    async def main() -> None:
        fs = CrashableMemFS(seed=5)
        engine = _engine(fs)
        target = Target()
        store = HintStore(engine, target.deliver, replay_concurrency=1)
        on_disk = [Mutation(b"d%d" % i, b"v", 10 + i) for i in range(3)]
        for m in on_disk:
            await store.add("node-b", m)
        fs.fill(0)
        in_memory = [Mutation(b"m%d" % i, b"v", 20 + i) for i in range(4)]
        for m in in_memory:
            await store.add("node-b", m)
        stats = store.stats()
        assert stats["in_memory"] == 4 and store.pending("node-b") == 7
        assert engine.stats()["disk_full"]

        target.down = True
        assert await store.replay("node-b") == 0
        assert store.pending("node-b") == 7
        target.down = False
        # Delivered; the stored hints stay (their delete needs room), the memory ones go.
        await store.replay("node-b")
        delivered = [m for _, m in target.received]
        assert delivered[:4] == in_memory and on_disk[0] in delivered
        assert store.stats()["in_memory"] == 0
        assert store.pending("node-b") == 3

        fs.free()
        target.received.clear()
        await wait_for_async(lambda: not engine.stats()["disk_full"], 10, "the engine to resume")
        # The first refused hint was applied before its WAL write failed and rewritten to a
        # fresh log with the room: unacknowledged, it may still land, and delivering it twice
        # is harmless (the replica keeps the newest version).
        assert await store.replay("node-b") in (3, 4)
        received = [m for _, m in target.received]
        assert [m for m in received if m in on_disk] == on_disk
        assert set(received) <= set(on_disk) | {in_memory[0]}
        assert store.pending() == 0
        engine.close()

    asyncio.run(main())
