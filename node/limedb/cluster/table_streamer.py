"""Range streaming as tables, the driver side: a target's ranges are grouped by the source that
will send them (`plan_groups`: the cuts spread evenly over the old replicas, a leaving node
cutting its own), each group is cut at its source into one table (TABLE_CUT), and the target is
told to pull it from that source and ingest it (TABLE_FETCH: the chunks go from the source to
the target directly, not through this driver; the target checks size and CRC32C before the
ingest). Each of the `parallel` workers asks for its next group's cut as soon as the current
one is in, so a source cuts while the target pulls and the rate is not left idle meanwhile (a
cut left unsent when a worker stops is dropped, or swept from the source once stale); the
first group of each worker is split in four (`ramp_up`), so the first pulls wait for a quarter
of a cut only. The
target paces the chunks of all the pulls this driver has under way to it together, to the
throttle's rate (TABLE_FETCH_SHARED): a pull alone, at the start or the end, gets the whole
rate, four share it. The throttle is also charged each table's size once it is in. A target
of the version before gets a fixed share (rate / `parallel`) per pull (TABLE_FETCH), or, older
still (NOT_FOUND for TABLE_FETCH too), the chunks relayed through this driver (TABLE_READ,
TABLE_WRITE, TABLE_INGEST), paced chunk by chunk. A group is complete only once ingested; its
ranges are then marked done in the same progress (and ring-record checkpoint) as key
streaming's. A group interrupted anywhere (a source, the target or this driver gone) is started
again from the cut, from another live source if need be: re-sending a table is harmless under
last-writer-wins (see limedb.storage.ingest).

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
from dataclasses import dataclass

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
    encode_fetch_shared,
)
from limedb.cluster.transitions import Kind, Transition

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


@dataclass(frozen=True)
class Group:
    """Consecutive positions of a target's streams cut into one table, and the source planned
    to cut it."""

    positions: list[int]
    source: str


def plan_groups(
    t: Transition,
    indexes: tuple[int, ...],
    positions: list[int],
    is_alive: Callable[[str], bool],
) -> list[Group]:
    """Consecutive positions (token order, so that the checkpoint, the first range not done,
    advances as groups complete), about TABLES_PER_TARGET groups in all, at most
    RANGES_PER_TABLE ranges each, every range of a group held by its source. A leaving node
    is the source wherever it holds the range (it hands off its own ranges); elsewhere the live
    source with the fewest ranges planned so far, so the cuts, and the reads the target's pulls
    make, spread over the old replicas instead of falling on the first in ring order."""
    size = min(RANGES_PER_TABLE, max(1, -(-len(positions) // TABLES_PER_TARGET)))
    leaving = t.change.node_id if t.kind is Kind.LEAVE else None
    planned: dict[str, int] = {}
    groups: list[Group] = []
    for pos in positions:
        sources = t.moves[indexes[pos]].sources
        last = groups[-1] if groups else None
        if last is not None and len(last.positions) < size and last.source in sources:
            last.positions.append(pos)
        else:
            alive = [s for s in sources if is_alive(s)] or list(sources)
            # (min: the first in ring order among the least planned)
            least = min(alive, key=lambda s: planned.get(s, 0))
            groups.append(Group([pos], leaving if leaving in alive else least))
        planned[groups[-1].source] = planned.get(groups[-1].source, 0) + 1
    return groups


def ramp_up(groups: list[Group], parallel: int, parts: int = 4) -> list[Group]:
    """`groups` with each of the first `parallel` split into `parts` consecutive groups of the
    same source: the workers start on cuts a `parts`-th as big, so the first pulls begin that
    much sooner (every later cut is made while the one before is pulled)."""
    out: list[Group] = []
    for i, group in enumerate(groups):
        if i >= parallel or len(group.positions) < 2:
            out.append(group)
            continue
        step = -(-len(group.positions) // parts)
        out.extend(
            Group(group.positions[j : j + step], group.source)
            for j in range(0, len(group.positions), step)
        )
    return out


@dataclass
class _Cut:
    """A TABLE_CUT asked of `source` for table `tid`; `reply` is its (entries, size, crc)."""

    source: str
    tid: int
    reply: asyncio.Future[bytes]


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
        # Per target: the session its pulls share the rate in; the targets that cannot.
        self.sessions: dict[str, int] = {}
        self.unshared: set[str] = set()

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
        groups = deque(
            ramp_up(plan_groups(t, indexes, positions, self.driver.is_alive), self.parallel)
        )
        self.sessions[target] = random.getrandbits(64)
        self.unshared.discard(target)  # (it may have been upgraded since)
        left: list[int] = []

        async def worker() -> None:
            # While one group's table is pulled, the next group's is cut (`cut_next`, called
            # once the current cut is in), so the source's cut does not leave this worker's
            # share of the rate idle.
            ahead: tuple[Group, _Cut] | None = None

            def cut_next() -> None:
                nonlocal ahead
                if ahead is not None or not groups:
                    return
                group = groups.popleft()
                source = self._source(t, indexes, group)
                if source is None:
                    groups.appendleft(group)  # cut when its turn comes, waiting for a source
                    return
                ranges = self._ranges(t, indexes, group, cursors)
                ahead = (group, self._start_cut(source, ranges, floor))

            try:
                while groups or ahead is not None:
                    if ahead is not None:
                        (group, precut), ahead = ahead, None
                    else:
                        group, precut = groups.popleft(), None
                    try:
                        keys, nbytes = await self._send(
                            t, target, indexes, group, cursors, throttle, floor, precut, cut_next
                        )
                    except _Fallback as exc:
                        log.info("ranges to %s go by keys: %s", target, exc)
                        left.extend(group.positions)
                        continue
                    done(group.positions, keys, nbytes)
            finally:
                if ahead is not None:  # stopped (an error, a rollback): its table is not sent
                    ahead[1].reply.cancel()
                    self._drop_later(ahead[1].source, target, ahead[1].tid)

        results = await asyncio.gather(
            *(worker() for _ in range(max(1, self.parallel))), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sorted(left)

    def _source(self, t: Transition, indexes: tuple[int, ...], group: Group) -> str | None:
        """The group's planned source if it is alive, else the first live node, in the ring
        order of the group's first range, that is a source of every range of the group."""
        if self.driver.is_alive(group.source):
            return group.source
        for s in t.moves[indexes[group.positions[0]]].sources:
            if self.driver.is_alive(s) and all(
                s in t.moves[indexes[p]].sources for p in group.positions
            ):
                return s
        return None

    @staticmethod
    def _ranges(
        t: Transition, indexes: tuple[int, ...], group: Group, cursors: dict[int, int | None]
    ) -> list[tuple[int, int]]:
        ranges = []
        for pos in group.positions:
            move = t.moves[indexes[pos]]
            cursor = cursors.get(pos)
            ranges.append((move.start if cursor is None else cursor, move.end))
        return ranges

    def _start_cut(self, source: str, ranges: list[tuple[int, int]], floor: float) -> _Cut:
        """Ask `source` to cut `ranges` into a new table; the reply comes in `_Cut.reply`."""
        tid = random.getrandbits(64)
        reply = asyncio.ensure_future(
            self._call(source, rpc.TABLE_CUT, encode_cut(tid, ranges, floor), SLOW_RPC_TIMEOUT_S)
        )
        # Its error is read by the attempt that awaits it; one never awaited is not an error.
        reply.add_done_callback(lambda f: f.cancelled() or f.exception())
        return _Cut(source, tid, reply)

    async def _send(
        self,
        t: Transition,
        target: str,
        indexes: tuple[int, ...],
        group: Group,
        cursors: dict[int, int | None],
        throttle: Throttle,
        floor: float,
        precut: _Cut | None,
        cut_done: Callable[[], None],
    ) -> tuple[int, int]:
        """Cut, relay and ingest one group (its first attempt may use `precut`, a cut started
        earlier); retried until it is in (or rolled back). `cut_done` is called whenever the
        group's cut is in, before its table is pulled."""
        ranges = self._ranges(t, indexes, group, cursors)
        while True:
            cut, precut = precut, None
            if cut is None:
                if not self.driver.is_alive(target):
                    self.driver.stalled(t, f"target {target}", target)
                    await asyncio.sleep(0.5)
                    continue
                source = self._source(t, indexes, group)
                if source is None:
                    self.driver.stalled(
                        t, f"every source of {len(group.positions)} ranges", "sources"
                    )
                    await asyncio.sleep(0.5)
                    continue
                cut = self._start_cut(source, ranges, floor)
            try:
                entries, size, crc = CUT_REPLY.unpack(await cut.reply)
                cut_done()
                sent = await self._deliver(cut, target, entries, size, crc, throttle)
            except rpc.RpcError as exc:
                if exc.code == rpc.NOT_FOUND:
                    raise TablesUnsupported(f"{exc.message}") from None
                if exc.code == rpc.TIMESTAMP_REFUSED:
                    raise _Fallback(exc.message) from None
                log.info("table to %s from %s failed, again: %s", target, cut.source, exc)
                await asyncio.sleep(0.5)
                continue
            except rpc.PeerUnavailable as exc:
                log.info("table streaming to %s paused: %s", target, exc)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._drop_later(cut.source, target, cut.tid)
            self.driver.reachable(target, "sources")
            return sent

    async def _deliver(
        self, cut: _Cut, target: str, entries: int, size: int, crc: int, throttle: Throttle
    ) -> tuple[int, int]:
        """Have `target` pull the cut table from its source and ingest it: paced together with
        this driver's other pulls to it (TABLE_FETCH_SHARED), or, by a target of the version
        before, at a fixed share of the rate (TABLE_FETCH)."""
        if not entries:
            return 0, 0
        source, tid = cut.source, cut.tid
        rate = int(throttle.bytes_per_s)
        share = rate // max(1, self.parallel)  # the least a pull gets: every worker pulling
        # Throttled, chunks of about a quarter second each at that share, so the pace is smooth.
        chunk = FETCH_CHUNK_BYTES if rate <= 0 else min(FETCH_CHUNK_BYTES, max(1 << 16, share // 4))
        # The transfer's paced time, then as long as an ingest may take.
        timeout = SLOW_RPC_TIMEOUT_S + (size / share if share > 0 else 0.0)
        reply = None
        if target not in self.unshared:
            session = self.sessions[target]
            fetch = encode_fetch_shared(tid, size, crc, chunk, source, rate, session)
            try:
                reply = await self._call(target, rpc.TABLE_FETCH_SHARED, fetch, timeout)
            except rpc.RpcError as exc:
                if exc.code != rpc.NOT_FOUND:
                    raise
                self.unshared.add(target)
        if reply is None:
            fetch = encode_fetch(tid, size, crc, chunk, source, share)
            try:
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
    rpc.TABLE_FETCH_SHARED: TableStreams.handle_fetch_shared,
}
