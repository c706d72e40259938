"""Hinted handoff: durable hints for replicas that missed a write, replayed when they return.

Hints live in their own storage engine (data_dir/hints) keyed by
`[u16 target length][target node id][u64 created ms][u64 sequence][user key]`, so all hints
for one target are one contiguous range in creation order. A hint is deleted once the target
acknowledged it; a hint older than the window (3 h by default) is dropped and counted instead,
because by then anti-entropy repair, not handoff, is the tool.
When this node's own disk is full (the hints engine refuses), a hint is kept in memory instead
(up to MEMORY_HINTS of them, counted beyond): replayed the same way, but lost on a restart,
after which anti-entropy repair brings the replica up to date.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator

from limedb.cluster.clock_offset import is_refusal
from limedb.cluster.replica import Mutation
from limedb.config import default
from limedb.hlc import wall_millis
from limedb.storage.errors import DiskFullError

log = logging.getLogger(__name__)

DEFAULT_WINDOW_MS: int = default("hint_window_ms")
_STAMP = struct.Struct("!QQ")
_LEN = struct.Struct("!H")
_PAGE = 1000
MEMORY_HINTS = 100_000

Deliver = Callable[[str, Mutation], Awaitable[None]]


def target_prefix(target: str) -> bytes:
    encoded = target.encode()
    return _LEN.pack(len(encoded)) + encoded


def _prefix_end(prefix: bytes) -> bytes:
    # The smallest key after every key that starts with prefix (a UTF-8 id never ends in 0xff).
    return prefix[:-1] + bytes([prefix[-1] + 1])


def hint_key(target: str, created_ms: int, seq: int, key: bytes) -> bytes:
    return target_prefix(target) + _STAMP.pack(created_ms, seq) + key


def _created_ms(hkey: bytes) -> int:
    (length,) = _LEN.unpack_from(hkey)
    created, _ = _STAMP.unpack_from(hkey, _LEN.size + length)
    return created


def _target_of(hkey: bytes) -> str:
    (length,) = _LEN.unpack_from(hkey)
    return hkey[_LEN.size : _LEN.size + length].decode()


class HintStore:
    """Stores, counts, replays and expires hints; `deliver(target, mutation)` sends one."""

    def __init__(
        self,
        engine,
        deliver: Deliver,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        replay_concurrency: int = 32,
        clock_ms: Callable[[], int] = wall_millis,
    ) -> None:
        self.engine = engine
        self._deliver = deliver
        self.window_ms = window_ms
        self._concurrency = replay_concurrency
        self._clock_ms = clock_ms
        self._seq = itertools.count()
        self._pending: dict[str, int] = {}
        self._replaying: dict[str, asyncio.Task] = {}
        self.stored = 0
        self.replayed = 0
        self.expired = 0
        # Hints the full disk refused, by target, in creation order: (created ms, mutation).
        self._in_memory: dict[str, list[tuple[int, Mutation]]] = {}
        self.in_memory = 0
        self.dropped_disk_full = 0
        self.refused = 0
        self._count_existing()

    def _count_existing(self) -> None:
        for hkey, version in self.engine.iter_range(None, None, include_tombstones=False):
            if not version.tombstone:
                target = _target_of(hkey)
                self._pending[target] = self._pending.get(target, 0) + 1

    def pending(self, target: str | None = None) -> int:
        if target is None:
            return sum(self._pending.values())
        return self._pending.get(target, 0)

    def targets(self) -> list[str]:
        return [target for target, count in self._pending.items() if count > 0]

    async def add(self, target: str, mutation: Mutation) -> None:
        """Durably record that `target` missed `mutation`."""
        created = self._clock_ms()
        hkey = hint_key(target, created, next(self._seq), mutation.key)
        try:
            await self.engine.put_async(hkey, mutation.encode())
        except DiskFullError:
            if self.in_memory >= MEMORY_HINTS:
                self.dropped_disk_full += 1
                return
            self._in_memory.setdefault(target, []).append((created, mutation))
            self.in_memory += 1
        self._pending[target] = self._pending.get(target, 0) + 1
        self.stored += 1

    def replay_soon(self, target: str) -> None:
        """Start replaying `target`'s hints in the background unless that already runs."""
        if self.pending(target) == 0:
            return
        task = self._replaying.get(target)
        if task is None or task.done():
            self._replaying[target] = asyncio.ensure_future(self.replay(target))

    def _pages(self, target: str) -> Iterator[list[tuple[bytes, bytes]]]:
        """`target`'s live hints in creation order, a page at a time, so that a long outage's
        hints are never all in memory and the event loop gets a turn between pages."""
        prefix = target_prefix(target)
        start, end = prefix, _prefix_end(prefix)
        while True:
            page = [
                (hkey, version.value)
                for hkey, version in itertools.islice(
                    self.engine.iter_range(start, end, include_tombstones=False), _PAGE
                )
                if not version.tombstone
            ]
            if not page:
                return
            yield page
            start = page[-1][0] + b"\x00"

    async def replay(self, target: str) -> int:
        """Deliver every hint for `target` in creation order; stops at the first failure.

        Returns how many hints were delivered. Delivery is idempotent (the target applies
        versions by timestamp), so a hint delivered twice after a crash does no harm.
        """
        oldest_ok = self._clock_ms() - self.window_ms
        delivered = await self._replay_in_memory(target, oldest_ok)
        if delivered < 0:
            return 0
        semaphore = asyncio.Semaphore(self._concurrency)
        failed = False

        async def one(hkey: bytes, payload: bytes) -> None:
            nonlocal delivered, failed
            async with semaphore:
                if failed:
                    return
                try:
                    await self._deliver(target, Mutation.decode(payload))
                except Exception as exc:  # the target went away again; keep the hint
                    if is_refusal(exc):
                        # Its timestamp is beyond the target's clock bound: retrying cannot
                        # help, and waiting would let a skewed clock's write land later.
                        log.warning("hint for %s dropped: %s", target, exc)
                        await self._forget(target, hkey)
                        self.refused += 1
                        return
                    if not failed:
                        log.info("hint replay to %s paused: %s", target, exc)
                    failed = True
                    return
                delivered += 1
                self.replayed += 1
                try:
                    await self._forget(target, hkey)
                except DiskFullError:
                    # Delivered, but the hint stays until this disk has room (delivering it
                    # again is harmless): stop here rather than re-deliver page after page.
                    failed = True

        for page in self._pages(target):
            sends = []
            for hkey, payload in page:
                if _created_ms(hkey) < oldest_ok:
                    await self._forget(target, hkey)
                    self.expired += 1
                else:
                    sends.append(one(hkey, payload))
            await asyncio.gather(*sends)
            if failed:
                break
        return delivered

    async def _replay_in_memory(self, target: str, oldest_ok: int) -> int:
        """Deliver `target`'s in-memory hints in order; -1 when one failed (the rest wait)."""
        queue = self._in_memory.get(target)
        delivered = 0
        while queue:
            created, mutation = queue[0]
            if created >= oldest_ok:
                try:
                    await self._deliver(target, mutation)
                except Exception as exc:  # the target is not taking writes yet
                    log.info("hint replay to %s paused: %s", target, exc)
                    return -1
                delivered += 1
                self.replayed += 1
            else:
                self.expired += 1
            queue.pop(0)
            self.in_memory -= 1
            self._decrement(target)
        self._in_memory.pop(target, None)
        return delivered

    def _decrement(self, target: str) -> None:
        count = self._pending.get(target, 0) - 1
        if count > 0:
            self._pending[target] = count
        else:
            self._pending.pop(target, None)

    async def expire(self) -> int:
        """Drop (and count) every hint older than the window. Each target's hints are in
        creation order, so the scan stops at its first hint still inside the window."""
        oldest_ok = self._clock_ms() - self.window_ms
        dropped = 0
        for target in list(self._pending):
            for page in self._pages(target):
                old = [hkey for hkey, _ in page if _created_ms(hkey) < oldest_ok]
                for hkey in old:
                    await self._forget(target, hkey)
                dropped += len(old)
                if len(old) < len(page):
                    break
        self.expired += dropped
        return dropped

    async def _forget(self, target: str, hkey: bytes) -> None:
        await self.engine.delete_async(hkey)
        self._decrement(target)

    async def stop(self) -> None:
        tasks = [task for task in self._replaying.values() if not task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def stats(self) -> dict:
        return {
            "pending": self.pending(),
            "pending_by_target": dict(self._pending),
            "stored": self.stored,
            "replayed": self.replayed,
            "expired": self.expired,
            "in_memory": self.in_memory,
            "dropped_disk_full": self.dropped_disk_full,
            "refused": self.refused,
        }
