"""Range streaming as tables, the node side: a source cuts token ranges out of its storage into
one SSTable (`Engine.export_ranges`, in a worker process when big) and serves it in chunks; a
target pulls the chunks straight from the source (TABLE_FETCH: the driver only names the
source, limedb.cluster.table_streamer) into a staging file, computing the CRC32C as they
arrive, checks size and checksum, and ingests it (`Engine.ingest`: one MANIFEST edit,
last-writer-wins kept).

Every transfer has an id the driver chose; the source's file is `streaming/out-<id>.sst`, the
target's `streaming/in-<id>.sst` under the data directory (outside the engine's own files).
A transfer cut short anywhere is started again under a new id (a re-sent table is harmless:
what it holds loses to, or equals, what the target stored meanwhile); files of transfers
nobody finished are deleted at start and once idle for STALE_S.

Wire format (every integer big-endian):
- TABLE_CUT `[u64 id][u64 floor age µs][u32 n] n × [u64 start][u64 end]` ->
  `[u64 entries][u64 size][u32 crc32c]` (entries 0: the ranges hold nothing, no file);
- TABLE_READ `[u64 id][u64 offset][u32 length]` -> the bytes (shorter at the end);
- TABLE_WRITE `[u64 id][u64 offset]` + bytes -> empty (offset 0 starts the file anew);
- TABLE_INGEST `[u64 id][u64 size][u32 crc32c]` -> `[u64 entries ingested][u64 written]`
  (written: versions that went through the write path; the file is removed);
- TABLE_FETCH `[u64 id][u64 size][u32 crc32c][u32 chunk bytes][u32 bytes per s]` + the
  source's node id (UTF-8) -> as TABLE_INGEST, after the target read the table from the
  source with TABLE_READ in chunks (one frame each) into its staging file, paced to the
  rate (0: unlimited). TABLE_WRITE and TABLE_INGEST stay for a
  driver of the version before, which relays the chunks itself;
- TABLE_FETCH_SHARED: TABLE_FETCH's fields, then `[u64 session]`, then the source's node id:
  the same pull, but the rate is for all the pulls of the session under way together (one
  driver's transfers to this node), so a pull alone runs at the whole rate. A driver sends it
  first and falls back to TABLE_FETCH, with its share of the rate, on NOT_FOUND;
- TABLE_DROP `[u64 id]` -> empty: the source's (and the target's) file of the transfer goes.
A node that does not know these kinds answers NOT_FOUND; the driver then streams keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crc32c import crc32c

from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets, TimestampRefused
from limedb.cluster.streaming import ANY_SNAPSHOT, Throttle, floor_of, storage_ranges
from limedb.hlc import HLC
from limedb.storage.block_cache import BlockCache
from limedb.storage.fs import RealFS
from limedb.storage.sstable import TableReader

log = logging.getLogger(__name__)

CUT_HEAD = struct.Struct("!QQI")
RANGE = struct.Struct("!QQ")
CUT_REPLY = struct.Struct("!QQI")
READ = struct.Struct("!QQI")
WRITE_HEAD = struct.Struct("!QQ")
INGEST = struct.Struct("!QQI")
INGESTED = struct.Struct("!QQ")
DROP = struct.Struct("!Q")
FETCH = struct.Struct("!QQIII")
FETCH_SHARED = struct.Struct("!QQIIIQ")  # FETCH, then the session whose pulls share the rate
STALE_S = 600.0
# A session's shared pace is forgotten once none of its pulls ran for this long.
PACER_IDLE_S = 60.0
# How long one chunk's TABLE_READ may take (a chunk is a few MB from the source's page cache).
READ_TIMEOUT_S = 30.0


def encode_fetch(
    tid: int, size: int, crc: int, chunk_bytes: int, source: str, bytes_per_s: int = 0
) -> bytes:
    """A TABLE_FETCH: pull table `tid` (`size` bytes, `crc`) from `source` at `bytes_per_s`
    (0: unlimited), then ingest it."""
    return FETCH.pack(tid, size, crc, chunk_bytes, bytes_per_s) + source.encode()


def encode_fetch_shared(
    tid: int, size: int, crc: int, chunk_bytes: int, source: str, bytes_per_s: int, session: int
) -> bytes:
    """A TABLE_FETCH_SHARED: as TABLE_FETCH, but paced together with every other pull of
    `session` (one driver's transfers to this node) to `bytes_per_s` in all, so one pull runs
    at the whole rate when it is alone and the pulls under way share it otherwise."""
    return FETCH_SHARED.pack(tid, size, crc, chunk_bytes, bytes_per_s, session) + source.encode()


def encode_cut(tid: int, ranges: list[tuple[int, int]], floor: float) -> bytes:
    """A TABLE_CUT of `ranges` (inclusive tokens) from a view taken after `floor` (0: any)."""
    age_us = ANY_SNAPSHOT if floor <= 0 else max(0, int((time.monotonic() - floor) * 1e6))
    return CUT_HEAD.pack(tid, age_us, len(ranges)) + b"".join(RANGE.pack(s, e) for s, e in ranges)


class TableStreams:
    """Serves TABLE_CUT / TABLE_READ / TABLE_DROP (source) and TABLE_WRITE / TABLE_INGEST
    (target)."""

    def __init__(
        self,
        engine,  # noqa: ANN001 - limedb.storage.Engine
        data_dir: str | os.PathLike,
        hlc: HLC,
        clock: ClockOffsets | None,
        call: rpc.Call | None = None,
    ) -> None:
        self.engine = engine
        self.call = call  # reaches a source by node id (TABLE_FETCH)
        # Runs a fetch's ingest as bulk background work (the node's BackgroundBudget.run).
        self.run_bulk: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None
        self.hlc = hlc
        self.clock = clock
        self.dir = Path(data_dir) / "streaming"
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._sending: set[int] = set()
        self._receiving: set[int] = set()
        # The pace each driver's session of pulls shares, and when a pull last used it.
        self._pacers: dict[int, tuple[Throttle, float]] = {}
        self.counters = {
            "tables_cut": 0,
            "tables_ingested": 0,
            "tables_pulled": 0,  # of them, pulled from the source by this node (TABLE_FETCH)
            "table_bytes_received": 0,
            "table_entries_ingested": 0,
            "table_versions_written": 0,
        }

    def _out(self, tid: int) -> Path:
        return self.dir / f"out-{tid:016x}.sst"

    def _in(self, tid: int) -> Path:
        return self.dir / f"in-{tid:016x}.sst"

    def _sweep(self) -> None:
        """Delete the files of transfers idle for STALE_S (their driver is gone) and forget
        them."""
        horizon = time.time() - STALE_S
        for path in self.dir.iterdir():
            try:
                if path.stat().st_mtime < horizon:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        self._sending = {t for t in self._sending if self._out(t).exists()}
        self._receiving = {t for t in self._receiving if self._in(t).exists()}
        idle = time.monotonic() - PACER_IDLE_S
        self._pacers = {s: p for s, p in self._pacers.items() if p[1] >= idle}

    def pacer(self, session: int, bytes_per_s: int) -> Throttle:
        """The one pace every pull of `session` goes by (a new one if the rate changed)."""
        held = self._pacers.get(session)
        throttle = held[0] if held is not None and held[0].bytes_per_s == bytes_per_s else None
        if throttle is None:
            throttle = Throttle(bytes_per_s)
        self._pacers[session] = (throttle, time.monotonic())
        return throttle

    # ------------------------------------------------------------------ source

    async def cut(
        self, tid: int, ranges: list[tuple[int, int]], floor: float
    ) -> tuple[int, int, int]:
        """(entries, size, crc32c) of the table of `ranges`, cut from a view taken now (after
        `floor`, which the request's sending already is)."""
        del floor  # a view taken on receipt is newer than any floor the driver set before
        self._sweep()
        out = await asyncio.to_thread(
            self.engine.export_ranges, storage_ranges(ranges), self._out(tid)
        )
        self.counters["tables_cut"] += 1
        if out.entries:
            self._sending.add(tid)
        return out.entries, out.size, out.crc32c

    async def handle_cut(self, body: bytes) -> bytes:
        tid, age_us, n = CUT_HEAD.unpack_from(body)
        ranges = [RANGE.unpack_from(body, CUT_HEAD.size + i * RANGE.size) for i in range(n)]
        return CUT_REPLY.pack(*await self.cut(tid, ranges, floor_of(age_us)))

    def read(self, tid: int, offset: int, length: int) -> bytes:
        with open(self._out(tid), "rb") as f:
            f.seek(offset)
            return f.read(length)

    async def handle_read(self, body: bytes) -> bytes:
        tid, offset, length = READ.unpack(body)
        try:
            return await asyncio.to_thread(self.read, tid, offset, length)
        except FileNotFoundError:
            raise rpc.RpcError(rpc.FAILED, f"no table {tid:016x} here") from None

    def drop(self, tid: int) -> None:
        self._out(tid).unlink(missing_ok=True)
        self._in(tid).unlink(missing_ok=True)
        self._sending.discard(tid)
        self._receiving.discard(tid)

    async def handle_drop(self, body: bytes) -> bytes:
        (tid,) = DROP.unpack(body)
        self.drop(tid)
        return b""

    # ------------------------------------------------------------------ target

    def write(self, tid: int, offset: int, data: bytes) -> None:
        path = self._in(tid)
        if offset == 0:
            self._sweep()
            self._receiving.add(tid)
        with open(path, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.write(data)
        self.counters["table_bytes_received"] += len(data)

    async def handle_write(self, body: bytes) -> bytes:
        tid, offset = WRITE_HEAD.unpack_from(body)
        try:
            await asyncio.to_thread(self.write, tid, offset, body[WRITE_HEAD.size :])
        except FileNotFoundError:
            raise rpc.RpcError(rpc.FAILED, f"transfer {tid:016x} lost its start") from None
        return b""

    def ingest(self, tid: int, size: int, crc: int, got: int | None = None) -> tuple[int, int]:
        """Ingest the staged table `tid` if it has `size` bytes and CRC32C `crc` (`got`: its
        checksum as computed on receipt, else it is read again for it)."""
        path = self._in(tid)
        try:
            with open(path, "rb") as f:
                if got is None:
                    data = f.read()
                    got = crc32c(data) if len(data) == size else None
                    del data
                if os.fstat(f.fileno()).st_size != size or got != crc:
                    raise rpc.RpcError(rpc.FAILED, f"table {tid:016x}: size or checksum differs")
                os.fsync(f.fileno())
            _fsync_dir(self.dir)
            if self.clock is not None:
                try:
                    self.clock.admit(_max_ts(path))
                except TimestampRefused as exc:
                    # Key streaming leaves such versions out one by one; a table cannot.
                    raise rpc.RpcError(rpc.TIMESTAMP_REFUSED, str(exc)) from None
            result = self.engine.ingest([path])
        finally:
            path.unlink(missing_ok=True)
            self._receiving.discard(tid)
        self.counters["tables_ingested"] += 1
        self.counters["table_entries_ingested"] += result.entries
        self.counters["table_versions_written"] += result.written
        return result.entries, result.written

    async def handle_ingest(self, body: bytes) -> bytes:
        tid, size, crc = INGEST.unpack(body)
        return INGESTED.pack(*await asyncio.to_thread(self.ingest, tid, size, crc))

    async def fetch(
        self,
        tid: int,
        size: int,
        crc: int,
        chunk: int,
        source: str,
        bytes_per_s: int = 0,
        session: int | None = None,
    ) -> tuple[int, int]:
        """Pull table `tid` from `source` in chunks of `chunk` bytes (each written, and added
        to the checksum, off the event loop) at `bytes_per_s` (0: unlimited; with a `session`,
        shared by its pulls under way), then ingest it."""
        path = self._in(tid)
        self._sweep()
        throttle = Throttle(bytes_per_s) if session is None else self.pacer(session, bytes_per_s)
        self._receiving.add(tid)
        got = 0
        try:
            with open(path, "wb") as f:
                offset = 0
                while offset < size:
                    length = min(chunk, size - offset)
                    data = await self._read_from(source, READ.pack(tid, offset, length))
                    if len(data) != length:
                        raise rpc.RpcError(rpc.FAILED, f"short read of table {tid:016x}")
                    got = await asyncio.to_thread(_append, f, data, got)
                    offset += length
                    self.counters["table_bytes_received"] += length
                    if session is not None:
                        self.pacer(session, bytes_per_s)  # in use: not forgotten meanwhile
                    await throttle.pace(length)
        except (rpc.PeerUnavailable, rpc.RpcError, OSError) as exc:
            self.drop(tid)
            if isinstance(exc, OSError):
                raise
            raise rpc.RpcError(rpc.FAILED, f"table {tid:016x} from {source}: {exc}") from None

        def ingest() -> Awaitable[tuple[int, int]]:
            return asyncio.to_thread(self.ingest, tid, size, crc, got)

        result = await (ingest() if self.run_bulk is None else self.run_bulk(ingest))
        self.counters["tables_pulled"] += 1
        return result

    async def _read_from(self, source: str, body: bytes) -> bytes:
        if self.call is None:
            raise rpc.RpcError(rpc.NOT_FOUND, "this node cannot reach peers for tables")
        return await self.call(source, rpc.TABLE_READ, body, READ_TIMEOUT_S)

    async def handle_fetch(self, body: bytes) -> bytes:
        tid, size, crc, chunk, rate = FETCH.unpack_from(body)
        source = body[FETCH.size :].decode()
        return INGESTED.pack(*await self.fetch(tid, size, crc, max(1, chunk), source, rate))

    async def handle_fetch_shared(self, body: bytes) -> bytes:
        tid, size, crc, chunk, rate, session = FETCH_SHARED.unpack_from(body)
        source = body[FETCH_SHARED.size :].decode()
        return INGESTED.pack(
            *await self.fetch(tid, size, crc, max(1, chunk), source, rate, session)
        )

    def stats(self) -> dict[str, int]:
        """Counters, with the transfers under way on either side (cut and not dropped yet,
        receiving and not ingested yet)."""
        return {
            **self.counters,
            "table_transfers_sending": len(self._sending),
            "table_transfers_receiving": len(self._receiving),
        }

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.TABLE_CUT, self.handle_cut)
        server.register(rpc.TABLE_READ, self.handle_read)
        server.register(rpc.TABLE_WRITE, self.handle_write)
        server.register(rpc.TABLE_INGEST, self.handle_ingest)
        server.register(rpc.TABLE_DROP, self.handle_drop)
        server.register(rpc.TABLE_FETCH, self.handle_fetch)
        server.register(rpc.TABLE_FETCH_SHARED, self.handle_fetch_shared)


def _append(f, data: bytes, crc: int) -> int:  # noqa: ANN001 - a binary file
    f.write(data)
    return crc32c(data, crc)


def _max_ts(path: Path) -> int:
    return TableReader(RealFS(), str(path), 0, BlockCache(0)).max_ts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
