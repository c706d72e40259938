"""Moving token ranges between nodes: the batch wire format, the source and sink sides, the
throttle, and the stream workers the transition driver runs.

Ranges move as tables by default (`stream_mode` tables, docs/transitions.md):
limedb.cluster.table_streamer cuts groups of ranges into SSTables at a source and the target
pulls and ingests them; key streaming (this module) is `stream_mode` keys, and the fallback: for every range left
when a peer does not serve the table kinds (an older version) and for a table with a
timestamp beyond the target's clock bound.

A range streams as a sequence of batches. The driver asks the source for the next batch from a
cursor token (STREAM_READ) and hands the entries, unparsed, to the target (STREAM_APPLY), which
writes them with their original timestamps, tombstones included; last-writer-wins makes a
re-sent batch harmless, so a stream interrupted anywhere resumes from its last checkpoint.
The source keeps its range iterator open between batches of one stream, so a range is one
storage scan rather than a seek and a snapshot per batch. Batches end on a token boundary.

Every range of a stream is read from one storage snapshot, taken once the transition's writes
already went to old and new owners (the driver says from when: its `floor`, a time on its own
monotonic clock), so a snapshot per range (a copy of the memtable each) is not paid hundreds
of times. The floor travels as an age, the microseconds between it and the request's sending,
which the source turns into a time on its monotonic clock: no wall clocks are compared, and
the time in transit only makes the source ask for a newer snapshot than it needs.

Wire format: a STREAM_READ request is `[u64 cursor][u64 end][u32 max bytes][u64 floor age µs,
2^64-1 = any snapshot]`;
the reply is
`[u8 done][u64 next cursor][u32 count]` followed by `count` entries, each
`[u16 key len][u32 value len][u64 ts][u64 expires_at_ms or 0][u8 tombstone][key][value]` with
the storage key (token-prefixed). STREAM_APPLY carries entries only and answers
`[u32 applied]`. HANDOFF carries `[u8 op]` and any number of `[u64 start][u64 end]`: op 1
hands off ranges this node no longer owns (cleanup: recorded in `handed_off.json`, hidden, and
purged from storage in the background), op 0 releases them (it is about to own them again: any
part still pending is purged first, then the record forgets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets, TimestampRefused
from limedb.cluster.handed_off import HandedOff
from limedb.cluster.keys import MAX_TOKEN, token_prefix
from limedb.cluster.transitions import RangeMove, StreamProgress, Transition, TransitionError
from limedb.hlc import HLC, wall_millis
from limedb.storage.batch import WriteBatch

log = logging.getLogger(__name__)

READ_REQUEST = struct.Struct("!QQIQ")
READ_HEAD = struct.Struct("!BQI")
ENTRY = struct.Struct("!HIQQB")
APPLIED = struct.Struct("!I")
HANDOFF_RANGE = struct.Struct("!QQ")
ITERATOR_IDLE_S = 30.0
SNAPSHOT_MAX_AGE_S = 60.0
HANDOFF, RELEASE = 1, 0
ANY_SNAPSHOT = (1 << 64) - 1  # the floor age of a read that any snapshot serves
RPC_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch read from a source: entries to apply and where the range continues."""

    done: bool
    next_cursor: int
    count: int
    entries: bytes

    @property
    def nbytes(self) -> int:
        return len(self.entries)


def snapshot_floor() -> float:
    """A floor for reads whose snapshot must be taken from now on (this process's clock)."""
    return time.monotonic()


def encode_read(cursor: int, end: int, max_bytes: int, floor: float) -> bytes:
    """A STREAM_READ of cursor..end from a snapshot taken after `floor` (0: any snapshot)."""
    age_us = ANY_SNAPSHOT if floor <= 0 else max(0, int((time.monotonic() - floor) * 1e6))
    return READ_REQUEST.pack(cursor, end, max_bytes, age_us)


def floor_of(age_us: int) -> float:
    """A received floor age as a time on this process's monotonic clock (rounded later).

    The age is truncated, which moves the floor later by up to one unit: in milliseconds a
    snapshot taken within a millisecond after the floor looked too old to serve it, and the
    source took another; in microseconds that no longer happens."""
    return 0.0 if age_us == ANY_SNAPSHOT else time.monotonic() - age_us / 1e6


def decode_batch(reply: bytes) -> Batch:
    done, cursor, count = READ_HEAD.unpack_from(reply)
    return Batch(bool(done), cursor, count, reply[READ_HEAD.size :])


def iter_entries(data: bytes) -> Iterator[tuple[bytes, bytes, int, int | None, bool]]:
    """(storage key, value, ts, expires_at_ms, tombstone) for every entry of a batch."""
    offset, size = 0, len(data)
    unpack = ENTRY.unpack_from
    while offset < size:
        klen, vlen, ts, expires, tomb = unpack(data, offset)
        offset += ENTRY.size
        key = data[offset : offset + klen]
        offset += klen
        value = data[offset : offset + vlen]
        offset += vlen
        yield key, value, ts, expires or None, bool(tomb)


def encode_handoff(op: int, ranges: list[tuple[int, int]]) -> bytes:
    return bytes([op]) + b"".join(HANDOFF_RANGE.pack(s, e) for s, e in ranges)


def decode_ranges(data: bytes) -> list[tuple[int, int]]:
    return [HANDOFF_RANGE.unpack_from(data, i) for i in range(0, len(data), HANDOFF_RANGE.size)]


def _range_end_key(end: int) -> bytes | None:
    return None if end >= MAX_TOKEN else token_prefix(end + 1)


PURGE_SLICES = 16
# A slice's rewrite holds the engine's compaction lock (storage/purge.py): on a big store a
# sixteenth of the data would hold off compactions for minutes while L0 fills up to the write
# stop, so a store over 16 of these is cut into more slices, each about this much of its tables.
PURGE_SLICE_BYTES = 256 << 20


def purge_slice_count(stored_bytes: int) -> int:
    """How many equal slices of the token space a store of `stored_bytes` is purged in."""
    return max(PURGE_SLICES, -(-stored_bytes // PURGE_SLICE_BYTES))


def purge_slices(
    ranges: list[tuple[int, int]], slices: int = PURGE_SLICES
) -> list[list[tuple[int, int]]]:
    """Inclusive token ranges cut along `slices` equal slices of the token space, grouped by
    slice in token order (slices holding nothing are left out)."""
    width = (MAX_TOKEN + 1) // slices
    out: list[list[tuple[int, int]]] = []
    for k in range(slices):
        lo, hi = k * width, MAX_TOKEN if k == slices - 1 else (k + 1) * width - 1
        part = [(max(s, lo), min(e, hi)) for s, e in ranges if s <= hi and e >= lo]
        if part:
            out.append(part)
    return out


def storage_ranges(ranges: list[tuple[int, int]]) -> list[tuple[bytes, bytes | None]]:
    """Inclusive token ranges as the storage key ranges [start, end) they cover."""
    return [(token_prefix(start), _range_end_key(end)) for start, end in ranges]


class _OpenRange:
    """A source-side iterator over one range, resumable at the token it stopped before."""

    def __init__(self, snapshot, cursor: int, end: int) -> None:
        self.end = end
        self.next_cursor = cursor
        self.used = time.monotonic()
        self._it = snapshot.iter_range(
            token_prefix(cursor), _range_end_key(end), include_tombstones=True
        )
        self._pending: tuple[bytes, object] | None = None

    def read(self, max_bytes: int) -> Batch:
        parts: list[bytes] = []
        nbytes = count = 0
        last_token = -1
        pack = ENTRY.pack
        while True:
            item = self._pending
            if item is None:
                item = next(self._it, None)
                if item is None:
                    self.next_cursor = self.end
                    return Batch(True, self.end, count, b"".join(parts))
            self._pending = None
            skey, version = item
            token = int.from_bytes(skey[:8], "big")
            if nbytes >= max_bytes and token != last_token:
                # Stop on a token boundary so that the cursor alone says where to resume.
                self._pending = item
                self.next_cursor = token
                return Batch(False, token, count, b"".join(parts))
            value = version.value or b""  # type: ignore[attr-defined]
            parts.append(
                pack(
                    len(skey),
                    len(value),
                    version.ts,  # type: ignore[attr-defined]
                    version.expires_at_ms or 0,  # type: ignore[attr-defined]
                    version.tombstone,  # type: ignore[attr-defined]
                )
            )
            parts.append(skey)
            parts.append(value)
            nbytes += ENTRY.size + len(skey) + len(value)
            count += 1
            last_token = token


class RangeStreams:
    """The node side of streaming: serves STREAM_READ, STREAM_APPLY and HANDOFF."""

    def __init__(
        self,
        engine,
        hlc: HLC,
        handed_off: HandedOff,
        clock: ClockOffsets | None = None,
        purge_bytes_per_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.hlc = hlc
        self.clock = clock  # admits every streamed timestamp (limedb.cluster.clock_offset)
        self.handed_off = handed_off
        # The background purge of handed-off ranges rewrites tables at compaction's rate, then
        # rests between slices so that it averages this rate (0: no rest): it runs right after
        # a transition on every old owner at once, while they serve the clients.
        self.purge_bytes_per_s = purge_bytes_per_s
        self._purges_stop = asyncio.Event()
        # The table side of streaming (limedb.cluster.table_streams), when the node has one.
        self.tables = None
        self._open: dict[tuple[int, int], _OpenRange] = {}
        self._snapshot = None
        self._snapshot_at = 0.0
        self._lock = asyncio.Lock()
        self._purge_lock = asyncio.Lock()
        self._purger: asyncio.Task | None = None
        self._additions = 0
        self._stopped = False
        self.counters = {
            "batches_read": 0,
            "batches_applied": 0,
            "keys_applied": 0,
            "purges": 0,
            "purge_rest_ms": 0,
            "timestamps_refused": 0,
        }

    # ------------------------------------------------------------------ source

    def _snapshot_since(self, floor: float):  # noqa: ANN202 - limedb.storage Snapshot
        if (
            self._snapshot is None
            or self._snapshot_at < floor
            or time.monotonic() - self._snapshot_at > SNAPSHOT_MAX_AGE_S
        ):
            # Stamped before it is taken: it holds at least everything written until then.
            taken_at = time.monotonic()
            self._snapshot = self.engine.snapshot()
            self._snapshot_at = taken_at
        return self._snapshot

    async def read(self, cursor: int, end: int, max_bytes: int, floor: float = 0.0) -> Batch:
        """The next batch of cursor..end from a snapshot taken at or after `floor` (this
        process's monotonic clock; 0 = any)."""
        if cursor > end:
            raise ValueError(f"cursor {cursor} past the range end {end}")
        async with self._lock:
            now = time.monotonic()
            for key, open_range in list(self._open.items()):
                if now - open_range.used > ITERATOR_IDLE_S:
                    del self._open[key]
            open_range = self._open.pop((cursor, end), None)
            if open_range is None:
                snapshot = await asyncio.to_thread(self._snapshot_since, floor)
                open_range = _OpenRange(snapshot, cursor, end)
            # The scan runs in a thread so a large batch never stalls client requests.
            batch = await asyncio.to_thread(open_range.read, max_bytes)
            open_range.used = time.monotonic()
            if not batch.done:
                self._open[(batch.next_cursor, end)] = open_range
        self.counters["batches_read"] += 1
        return batch

    async def handle_read(self, body: bytes) -> bytes:
        cursor, end, max_bytes, age_us = READ_REQUEST.unpack(body)
        batch = await self.read(cursor, end, max_bytes, floor_of(age_us))
        return READ_HEAD.pack(batch.done, batch.next_cursor, batch.count) + batch.entries

    # ------------------------------------------------------------------ sink

    async def apply(self, entries: bytes) -> int:
        batch = WriteBatch()
        newest = 0
        for skey, value, ts, expires, tomb in iter_entries(entries):
            if self.clock is not None:
                try:
                    self.clock.admit(ts)
                except TimestampRefused:
                    # One version from a skewed clock must not stall a whole range's stream.
                    self.counters["timestamps_refused"] += 1
                    continue
            if tomb:
                batch.delete(skey, ts)
            else:
                batch.put(skey, value, ts, expires)
            newest = max(newest, ts)
        if not batch.ops:
            return 0
        self.hlc.observe(newest)
        results = await self.engine.write_async(batch)
        applied = sum(results)
        self.counters["batches_applied"] += 1
        self.counters["keys_applied"] += applied
        return applied

    async def handle_apply(self, body: bytes) -> bytes:
        return APPLIED.pack(await self.apply(body))

    # ------------------------------------------------------------------ cleanup

    def hand_off(self, ranges: list[tuple[int, int]]) -> None:
        """Give up token ranges: record them (hidden from the local listing and counts until
        released), then purge them from storage in the background; a purge cut short by a
        crash stays pending in the record, and the node's restart resumes it."""
        self.handed_off.add_all(ranges)
        self._additions += 1
        self.resume_purges()

    async def release(self, ranges: list[tuple[int, int]]) -> None:
        """About to own `ranges` again: purge what is still pending of them first (stale copies
        must not outlive the release), so everything that streams in afterwards is kept."""
        async with self._purge_lock:
            pending = [
                (max(s, start), min(e, end))
                for s, e in self.handed_off.pending()
                for start, end in ranges
                if s <= end and start <= e
            ]
            if pending:
                await asyncio.to_thread(self.engine.purge_ranges, storage_ranges(pending))
            self.handed_off.release_all(ranges)

    async def handoff(self, op: int, ranges: list[tuple[int, int]]) -> None:
        if op == HANDOFF:
            self.hand_off(ranges)
        else:
            await self.release(ranges)

    async def handle_handoff(self, body: bytes) -> bytes:
        await self.handoff(body[0], decode_ranges(body[1:]))
        return b""

    def resume_purges(self) -> None:
        """Start purging the pending handed-off ranges (needs a running event loop; the transition
        driver calls this again when it starts)."""
        if not self.handed_off.pending() or self._stopped:
            return
        if self._purger is not None and not self._purger.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._purger = loop.create_task(self._purge_pending(), name="range-purge")

    async def _purge_pending(self) -> None:
        # One slice of the token space at a time: a purge holds the engine's compaction lock
        # while it rewrites, so a big store's purge in one go would hold off compactions (and,
        # under writes, pile up L0 up to the write stop) for its whole duration.
        while self.handed_off.pending() and not self._stopped:
            async with self._purge_lock:
                stored = sum(level["bytes"] for level in self.engine.stats()["levels"])
                slices = purge_slices(self.handed_off.pending(), purge_slice_count(stored))
                if not slices:
                    return
                ranges = slices[0]
                additions = self._additions
                rewritten, started = self.engine.purged_bytes, time.monotonic()
                try:
                    await asyncio.to_thread(self.engine.purge_ranges, storage_ranges(ranges))
                except Exception:
                    log.exception("range purge failed; it stays pending until the next start")
                    return
                if additions == self._additions:
                    # Ranges handed off during the purge were not covered by its cut: only a
                    # purge that nothing was added during counts as done.
                    self.handed_off.purged(ranges)
            self.counters["purges"] += 1
            await self._rest_after_purge(
                self.engine.purged_bytes - rewritten, time.monotonic() - started
            )

    def purge_stats(self) -> dict[str, int]:
        """The background purge of handed-off ranges: slices purged, time rested to keep its
        pace, ranges still to purge (for /api/v1/health)."""
        return {
            "slices_purged": self.counters["purges"],
            "rest_ms": self.counters["purge_rest_ms"],
            "ranges_pending": len(self.handed_off.pending()),
            "mb_per_s": round(self.purge_bytes_per_s / 1e6),
        }

    async def _rest_after_purge(self, nbytes: int, took_s: float) -> None:
        """Rest so that this slice's rewrite averages `purge_bytes_per_s`; a stop ends it."""
        if self.purge_bytes_per_s <= 0 or self._stopped:
            return
        rest = nbytes / self.purge_bytes_per_s - took_s
        if rest > 0:
            self.counters["purge_rest_ms"] += round(rest * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._purges_stop.wait(), rest)

    def handed_off_keys(self) -> int:
        """Live keys stored in handed-off ranges: not purged yet, or written after the purge
        (a replayed hint); none of them is this node's."""
        ranges = self.handed_off.ranges()
        if not ranges:
            return 0
        with self.engine.snapshot() as snap:
            return sum(
                sum(1 for _ in snap.iter_range(start, end)) for start, end in storage_ranges(ranges)
            )

    async def stop_purges(self) -> None:
        """Let a running purge finish (it is one engine call) and start no other."""
        self._stopped = True
        self._purges_stop.set()
        if self._purger is not None:
            await asyncio.gather(self._purger, return_exceptions=True)

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.STREAM_READ, self.handle_read)
        server.register(rpc.STREAM_APPLY, self.handle_apply)
        server.register(rpc.HANDOFF, self.handle_handoff)


class Throttle:
    """Paces a stream to `bytes_per_s` (0 = unlimited) by sleeping after each batch."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self._start = time.monotonic()
        self._sent = 0

    async def pace(self, nbytes: int) -> None:
        if self.bytes_per_s <= 0:
            return
        self._sent += nbytes
        ahead = self._sent / self.bytes_per_s - (time.monotonic() - self._start)
        if ahead > 0:
            await asyncio.sleep(ahead)
        elif ahead < -1.0:
            # Idle time (waiting on a dead peer) is not credit for a later burst.
            self._start = time.monotonic() - self._sent / self.bytes_per_s


class StreamDriver(Protocol):
    """What the stream workers need from the transition driver that runs them."""

    def is_alive(self, node_id: str) -> bool: ...

    def current(self, t: Transition) -> Transition:
        """The newest copy of `t`; raises if the record moved on without it."""
        ...

    def step(self, t: Transition) -> None:
        """Adopt `t` (a checkpoint) as the ring record's transition."""
        ...

    def stalled(self, t: Transition, what: str, since_key: str) -> None:
        """`what` is unreachable; past the timeout this rolls the transition back (raises)."""
        ...

    def reachable(self, *since_keys: str) -> None: ...


class RateMeter:
    """Bytes per second streamed by this node over the last few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, nbytes: int) -> None:
        self._samples.append((time.monotonic(), nbytes))
        self._trim()

    def _trim(self) -> None:
        horizon = time.monotonic() - self.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def rate(self) -> float:
        self._trim()
        return sum(n for _, n in self._samples) / self.window_s


@dataclass
class _TargetRun:
    """One target's streaming in this process: ranges done, cursors of ranges in flight."""

    first: int
    first_cursor: int | None
    keys: int
    nbytes: int
    done: set[int] = field(default_factory=set)
    cursors: dict[int, int | None] = field(default_factory=dict)
    checkpointed: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.first_cursor is not None:
            self.cursors[self.first] = self.first_cursor


class RangeStreamer:
    """The driver's stream workers: for each target, its ranges batch by batch from a live
    source (STREAM_READ) to the target (STREAM_APPLY), throttled, with the position
    checkpointed into the ring record about once a second."""

    def __init__(
        self,
        node_id: str,
        streams: RangeStreams,
        call: rpc.Call,
        driver: StreamDriver,
        *,
        batch_bytes: int,
        checkpoint_s: float,
        parallel_ranges: int,
        tables: bool = False,
    ) -> None:
        self.node_id = node_id
        self.streams = streams
        self.call = call
        self.driver = driver
        self.batch_bytes = batch_bytes
        self.checkpoint_s = checkpoint_s
        self.parallel_ranges = parallel_ranges
        self.meter = RateMeter()
        self.tables = None
        if tables:
            from limedb.cluster.table_streamer import TableStreamer

            self.tables = TableStreamer(
                node_id,
                streams.tables,
                call,
                driver,
                self.meter,
                chunk_bytes=2 * batch_bytes,
                parallel=parallel_ranges,
            )

    async def stream(
        self,
        t: Transition,
        target: str,
        progress: StreamProgress,
        throttle: Throttle,
        floor: float,
    ) -> None:
        """Stream `target`'s ranges from `progress` on, a few at a time (each round trip waits
        behind client traffic on busy nodes); the checkpoint is the first range not yet
        complete."""
        indexes = t.streams()[target]
        run = _TargetRun(progress.index, progress.cursor, progress.keys, progress.bytes)
        queue = deque(range(progress.index, len(indexes)))
        if self.tables is not None and queue:
            queue = deque(await self._stream_tables(t, target, list(queue), run, throttle, floor))

        async def worker() -> None:
            while queue:
                position = queue.popleft()
                move = t.moves[indexes[position]]
                cursor = run.cursors.get(position)
                run.cursors[position] = cursor
                while True:
                    batch = await self._next_batch(t, target, move, cursor, floor)
                    run.keys += batch.count
                    run.nbytes += batch.nbytes
                    self.meter.add(batch.nbytes)
                    if batch.done:
                        run.done.add(position)
                        run.cursors.pop(position, None)
                    else:
                        cursor = run.cursors[position] = batch.next_cursor
                    if time.monotonic() - run.checkpointed >= self.checkpoint_s:
                        self._checkpoint(t, target, run)
                    await throttle.pace(batch.nbytes)
                    if batch.done:
                        break

        workers = [worker() for _ in range(max(1, self.parallel_ranges))]
        results = await asyncio.gather(*workers, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._checkpoint(t, target, run)

    async def _stream_tables(
        self,
        t: Transition,
        target: str,
        positions: list[int],
        run: _TargetRun,
        throttle: Throttle,
        floor: float,
    ) -> list[int]:
        """Send `positions` as tables (limedb.cluster.table_streamer); the positions left for
        key streaming (all that are not done when a peer does not serve tables)."""
        from limedb.cluster.table_streamer import TablesUnsupported

        def done(group: list[int], keys: int, nbytes: int) -> None:
            run.keys += keys
            run.nbytes += nbytes
            for position in group:
                run.done.add(position)
                run.cursors.pop(position, None)
            if time.monotonic() - run.checkpointed >= self.checkpoint_s:
                self._checkpoint(t, target, run)

        assert self.tables is not None
        try:
            return await self.tables.stream(
                t, target, positions, dict(run.cursors), done, throttle, floor
            )
        except TablesUnsupported as exc:
            log.info("streaming keys to %s: a peer does not serve tables (%s)", target, exc)
            return [p for p in positions if p not in run.done]

    async def _next_batch(
        self, t: Transition, target: str, move: RangeMove, cursor: int | None, floor: float
    ) -> Batch:
        """Read the next batch of `move` from a live source and apply it to `target`,
        waiting out (and, past the timeout, rolling back on) unreachable peers."""
        while True:
            if not self.driver.is_alive(target):
                self.driver.stalled(t, f"target {target}", target)
                await asyncio.sleep(0.5)
                continue
            sources = [s for s in move.sources if self.driver.is_alive(s)]
            if not sources:
                self.driver.stalled(t, f"every source of range {move.start}..{move.end}", "sources")
                await asyncio.sleep(0.5)
                continue
            # Sources in ring order (a leaving node first): the load spreads over the replicas.
            try:
                start = move.start if cursor is None else cursor
                batch = await self._read(sources[0], start, move.end, floor)
                if batch.count:
                    await self._apply(target, batch.entries)
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                log.info("streaming to %s paused: %s", target, exc)
                await asyncio.sleep(0.5)
                continue
            self.driver.reachable(target, "sources")
            return batch

    def _checkpoint(self, t: Transition, target: str, run: _TargetRun) -> None:
        run.checkpointed = time.monotonic()
        index = run.first
        while index in run.done:
            index += 1
        cursor = run.cursors.get(index)
        current = self.driver.current(t)
        before = current.progress_of(target)
        try:
            stepped = current.record_progress(
                target,
                index=index,
                cursor=cursor,
                keys=max(run.keys, before.keys),
                nbytes=max(run.nbytes, before.bytes),
                now_ms=wall_millis(),
            )
        except TransitionError as exc:
            # Another driver got further (or the same) in the meantime; its record stands.
            log.debug("checkpoint of %s not recorded: %s", target, exc)
            return
        self.driver.step(stepped)

    async def _read(self, source: str, cursor: int, end: int, floor: float) -> Batch:
        if source == self.node_id:
            return await self.streams.read(cursor, end, self.batch_bytes, floor)
        reply = await self.call(
            source, rpc.STREAM_READ, encode_read(cursor, end, self.batch_bytes, floor),
            RPC_TIMEOUT_S,
        )  # fmt: skip
        return decode_batch(reply)

    async def _apply(self, target: str, entries: bytes) -> int:
        if target == self.node_id:
            return await self.streams.apply(entries)
        (applied,) = APPLIED.unpack(
            await self.call(target, rpc.STREAM_APPLY, entries, RPC_TIMEOUT_S)
        )
        return applied
