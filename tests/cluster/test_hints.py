"""Hinted handoff storage: durable across a restart, replayed in order, expired after 3 h;
kept in memory while the disk is full."""

from __future__ import annotations

import asyncio
from pathlib import Path

from limedb.cluster.hints import DEFAULT_WINDOW_MS, HintStore
from limedb.cluster.replica import Mutation
from limedb.storage import CrashableMemFS, Engine, EngineOptions
from support.wait import wait_for_async

HOUR_MS = 3600 * 1000


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Target:
    """The receiving side: records deliveries, or refuses them while `down`."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Mutation]] = []
        self.down = False

    async def deliver(self, node: str, mutation: Mutation) -> None:
        if self.down:
            raise ConnectionRefusedError("replica down")
        self.received.append((node, mutation))


def _open(path: Path) -> Engine:
    return Engine.open(path, EngineOptions(durability="sync"))


def test_hints_survive_a_restart_and_replay_in_order_per_target(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    mutations = [Mutation(f"k{i}".encode(), f"v{i}".encode(), 100 + i) for i in range(5)]

    async def write_hints() -> None:
        engine = _open(tmp_path)
        store = HintStore(engine, Target().deliver, clock_ms=clock)
        for i, mutation in enumerate(mutations):
            clock.now_ms += 1
            await store.add("node-b" if i % 2 else "node-c", mutation)
        assert (store.pending("node-b"), store.pending("node-c")) == (2, 3)
        engine.close()

    async def replay() -> Target:
        engine = _open(tmp_path)
        target = Target()
        store = HintStore(engine, target.deliver, clock_ms=clock)
        assert store.pending() == 5  # counted again from disk
        assert await store.replay("node-c") == 3
        assert store.pending() == 2 and store.targets() == ["node-b"]
        engine.close()
        return target

    asyncio.run(write_hints())
    target = asyncio.run(replay())
    assert [m for _, m in target.received] == [mutations[0], mutations[2], mutations[4]]
    assert {node for node, _ in target.received} == {"node-c"}


def test_replay_stops_at_a_refusing_target_and_keeps_its_hints(tmp_path: Path) -> None:
    async def main() -> None:
        engine = _open(tmp_path)
        target = Target()
        store = HintStore(engine, target.deliver, replay_concurrency=1)
        for i in range(4):
            await store.add("node-b", Mutation(b"k%d" % i, b"v", 10 + i))
        target.down = True
        assert await store.replay("node-b") == 0
        assert store.pending("node-b") == 4
        target.down = False
        assert await store.replay("node-b") == 4
        assert store.pending() == 0 and store.replayed == 4
        engine.close()

    asyncio.run(main())


def test_hints_older_than_the_window_are_dropped_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock(10 * HOUR_MS)
        engine = _open(tmp_path)
        target = Target()
        store = HintStore(engine, target.deliver, clock_ms=clock)
        assert store.window_ms == DEFAULT_WINDOW_MS == 3 * HOUR_MS
        await store.add("node-b", Mutation(b"old", b"v", 1))
        clock.now_ms += 2 * HOUR_MS
        await store.add("node-b", Mutation(b"recent", b"v", 2))
        await store.add("node-c", Mutation(b"old-c", b"v", 3))
        clock.now_ms += 1 * HOUR_MS + 1  # "old" is now 3 h + 1 ms old, "recent" 1 h
        assert await store.replay("node-b") == 1
        assert [m.key for _, m in target.received] == [b"recent"]
        assert store.expired == 1
        clock.now_ms += 2 * HOUR_MS  # now node-c's hint is past the window too
        assert await store.expire() == 1
        assert store.expired == 2 and store.pending() == 0
        engine.close()

    asyncio.run(main())


def test_a_long_outage_worth_of_hints_replays_page_by_page_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock(5 * HOUR_MS)
        engine = _open(tmp_path)
        target = Target()
        store = HintStore(engine, target.deliver, clock_ms=clock, replay_concurrency=1)
        mutations = [Mutation(b"k%05d" % i, b"v", 1000 + i) for i in range(2500)]
        for start in range(0, len(mutations), 500):
            clock.now_ms += 1
            await asyncio.gather(*(store.add("node-b", m) for m in mutations[start : start + 500]))
        assert await store.replay("node-b") == 2500
        # Hints added in the same millisecond replay by their sequence: creation order.
        assert [m for _, m in target.received] == mutations
        assert store.pending() == 0
        engine.close()

    asyncio.run(main())


def _memfs_engine(fs: CrashableMemFS) -> Engine:
    return Engine.open("/hints", EngineOptions(durability="sync"), fs=fs)


def test_hints_refused_by_a_full_disk_are_kept_in_memory_and_replayed() -> None:
    async def main() -> None:
        fs = CrashableMemFS(seed=5)
        engine = _memfs_engine(fs)
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
