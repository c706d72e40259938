"""Range streaming as tables, the driver side: a target's ranges are grouped by the source that
will send them, each group is cut at its source into one table (TABLE_CUT), and the target is
told to pull it from that source and ingest it (TABLE_FETCH: the chunks go from the source to
the target directly, not through this driver; the target checks size and CRC32C before the
ingest). The target paces its chunks to the throttle's rate shared by the `parallel` groups
in flight, and the throttle is charged each table's size once it is in. A target of the version
before (NOT_FOUND for TABLE_FETCH) gets the chunks relayed through this driver (TABLE_READ,
TABLE_WRITE, TABLE_INGEST), paced chunk by chunk. A group is complete only once
ingested; its ranges are then marked done in the same progress (and ring-record checkpoint)
as key streaming's. A group interrupted anywhere (a source, the target or this driver gone)
is started again from the cut, from another live source if need be: re-sending a table is
harmless under last-writer-wins (see limedb.storage.ingest).

Key streaming (limedb.cluster.streaming) stays the fallback: for every range left when a peer
does not know the table kinds (NOT_FOUND: an older version), and for a group whose table
holds a timestamp beyond the target's clock bound (key streaming leaves those versions out
one by one).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

from limedb.cluster import rpc
from limedb.cluster.streaming import RateMeter, StreamDriver, Throttle
from limedb.cluster.table_streams import (
    CUT_REPLY,
    DROP,
    INGEST,
    INGESTED,
    READ,
    WRITE_HEAD,
    TableStreams,
    encode_cut,
    encode_fetch,
)
from limedb.cluster.transitions import Transition

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0
# A cut or an ingest of a big group takes a while (it is one table of up to a few hundred MB).
SLOW_RPC_TIMEOUT_S = 300.0
RANGES_PER_TABLE = 256
# Tables a target's ranges are cut into: progress moves in steps of about 1/16, and few enough
# tables land in the target's L0 (its compaction merges them).
TABLES_PER_TARGET = 16
# Bytes per TABLE_READ when a target pulls a table: one frame each, few round trips.
FETCH_CHUNK_BYTES = 4 << 20


class TablesUnsupported(Exception):
    """A peer does not serve the table kinds: stream keys instead."""


class _Fallback(Exception):
    """This group goes by keys (its table holds a timestamp the target refuses)."""


class TableStreamer:
    def __init__(
        self,
        node_id: str,
        local: TableStreams | None,
        call: rpc.Call,
        driver: StreamDriver,
        meter: RateMeter,
        *,
        chunk_bytes: int,
        parallel: int,
    ) -> None:
        self.node_id = node_id
        self.local = local
        self.call = call
        self.driver = driver
        self.meter = meter
        self.chunk_bytes = chunk_bytes
        self.parallel = parallel
        self.tables_sent = 0

    async def stream(
        self,
        t: Transition,
        target: str,
        positions: list[int],
        cursors: dict[int, int | None],
        done: Callable[[list[int], int, int], None],
        throttle: Throttle,
        floor: float,
    ) -> list[int]:
        """Send `positions` (indexes into target's streams) as tables; `done(positions, keys,
        bytes)` records each ingested group. Returns the positions left for key streaming."""
        indexes = t.streams()[target]
        groups = deque(self._groups(t, indexes, positions))
        left: list[int] = []

        async def worker() -> None:
            while groups:
                group = groups.popleft()
                try:
                    keys, nbytes = await self._send(
                        t, target, indexes, group, cursors, throttle, floor
                    )
                except _Fallback as exc:
                    log.info("ranges to %s go by keys: %s", target, exc)
                    left.extend(group)
                    continue
                done(group, keys, nbytes)

        results = await asyncio.gather(
            *(worker() for _ in range(max(1, self.parallel))), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sorted(left)

    def _groups(
        self, t: Transition, indexes: tuple[int, ...], positions: list[int]
    ) -> list[list[int]]:
        """Consecutive positions (token order, so that the checkpoint, the first range not
        done, advances as groups complete) that the group's source holds: the first live
        source of its first range, in ring order (a leaving node first), as key streaming
        picks it. About TABLES_PER_TARGET groups in all, at most RANGES_PER_TABLE ranges each."""
        size = min(RANGES_PER_TABLE, max(1, -(-len(positions) // TABLES_PER_TARGET)))
        groups: list[list[int]] = []
        source = ""
        for pos in positions:
            sources = t.moves[indexes[pos]].sources
            if groups and len(groups[-1]) < size and source in sources:
                groups[-1].append(pos)
            else:
                groups.append([pos])
                alive = [s for s in sources if self.driver.is_alive(s)] or list(sources)
                source = alive[0]
        return groups

    def _source(self, t: Transition, indexes: tuple[int, ...], group: list[int]) -> str | None:
        """The first live node, in the ring order of the group's first range, that is a
        source of every range of the group."""
        for s in t.moves[indexes[group[0]]].sources:
            if self.driver.is_alive(s) and all(s in t.moves[indexes[p]].sources for p in group):
                return s
        return None

    async def _send(
        self,
        t: Transition,
        target: str,
        indexes: tuple[int, ...],
        group: list[int],
        cursors: dict[int, int | None],
        throttle: Throttle,
        floor: float,
    ) -> tuple[int, int]:
        """Cut, relay and ingest one group; retried until it is in (or rolled back)."""
        ranges = []
        for pos in group:
            move = t.moves[indexes[pos]]
            cursor = cursors.get(pos)
            ranges.append((move.start if cursor is None else cursor, move.end))
        while True:
            if not self.driver.is_alive(target):
                self.driver.stalled(t, f"target {target}", target)
                await asyncio.sleep(0.5)
                continue
            source = self._source(t, indexes, group)
            if source is None:
                self.driver.stalled(t, f"every source of {len(group)} ranges", "sources")
                await asyncio.sleep(0.5)
                continue
            tid = random.getrandbits(64)
            try:
                sent = await self._transfer(source, target, tid, ranges, throttle, floor)
            except rpc.RpcError as exc:
                if exc.code == rpc.NOT_FOUND:
                    raise TablesUnsupported(f"{exc.message}") from None
                if exc.code == rpc.TIMESTAMP_REFUSED:
                    raise _Fallback(exc.message) from None
                log.info("table to %s from %s failed, again: %s", target, source, exc)
                await asyncio.sleep(0.5)
                continue
            except rpc.PeerUnavailable as exc:
                log.info("table streaming to %s paused: %s", target, exc)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._drop_later(source, target, tid)
            self.driver.reachable(target, "sources")
            return sent

    async def _transfer(
        self,
        source: str,
        target: str,
        tid: int,
        ranges: list[tuple[int, int]],
        throttle: Throttle,
        floor: float,
    ) -> tuple[int, int]:
        cut = encode_cut(tid, ranges, floor)
        entries, size, crc = CUT_REPLY.unpack(
            await self._call(source, rpc.TABLE_CUT, cut, SLOW_RPC_TIMEOUT_S)
        )
        if not entries:
            return 0, 0
        rate = int(throttle.bytes_per_s / max(1, self.parallel))
        # Throttled, chunks of about a quarter second each, so the pace is smooth.
        chunk = FETCH_CHUNK_BYTES if rate <= 0 else min(FETCH_CHUNK_BYTES, max(1 << 16, rate // 4))
        fetch = encode_fetch(tid, size, crc, chunk, source, rate)
        try:
            # The transfer's paced time, then as long as an ingest may take.
            timeout = SLOW_RPC_TIMEOUT_S + (size / rate if rate > 0 else 0.0)
            reply = await self._call(target, rpc.TABLE_FETCH, fetch, timeout)
        except rpc.RpcError as exc:
            if exc.code != rpc.NOT_FOUND:
                raise
            return await self._relay(source, target, tid, entries, size, crc, throttle)
        INGESTED.unpack(reply)
        self.meter.add(size)
        self.tables_sent += 1
        await throttle.pace(size)
        return entries, size

    async def _relay(
        self,
        source: str,
        target: str,
        tid: int,
        entries: int,
        size: int,
        crc: int,
        throttle: Throttle,
    ) -> tuple[int, int]:
        """Relay the table's chunks through this node (a target that does not pull)."""
        offset = 0
        while offset < size:
            length = min(self.chunk_bytes, size - offset)
            data = await self._call(source, rpc.TABLE_READ, READ.pack(tid, offset, length))
            if len(data) != length:
                raise rpc.RpcError(rpc.FAILED, f"short read of table {tid:016x} at {offset}")
            await self._call(target, rpc.TABLE_WRITE, WRITE_HEAD.pack(tid, offset) + data)
            offset += length
            self.meter.add(length)
            await throttle.pace(length)
        reply = await self._call(
            target, rpc.TABLE_INGEST, INGEST.pack(tid, size, crc), SLOW_RPC_TIMEOUT_S
        )
        INGESTED.unpack(reply)
        self.tables_sent += 1
        return entries, size

    def _drop_later(self, source: str, target: str, tid: int) -> None:
        async def drop(node: str) -> None:
            try:
                await self._call(node, rpc.TABLE_DROP, DROP.pack(tid))
            except (rpc.RpcError, rpc.PeerUnavailable):
                pass  # its file goes once stale, or at its next start

        for node in {source, target}:
            asyncio.get_running_loop().create_task(drop(node))

    async def _call(
        self, node: str, kind: int, payload: bytes, timeout: float = RPC_TIMEOUT_S
    ) -> bytes:
        if node == self.node_id and self.local is not None:
            return await _LOCAL[kind](self.local, payload)
        return await self.call(node, kind, payload, timeout)


_LOCAL: dict[int, Callable[[TableStreams, bytes], Awaitable[bytes]]] = {
    rpc.TABLE_CUT: TableStreams.handle_cut,
    rpc.TABLE_READ: TableStreams.handle_read,
    rpc.TABLE_WRITE: TableStreams.handle_write,
    rpc.TABLE_INGEST: TableStreams.handle_ingest,
    rpc.TABLE_DROP: TableStreams.handle_drop,
    rpc.TABLE_FETCH: TableStreams.handle_fetch,
}
