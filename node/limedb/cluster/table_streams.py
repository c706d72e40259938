"""Range streaming as tables, the node side: a source cuts token ranges out of its storage into
one SSTable (`Engine.export_ranges`, in a worker process when big) and serves it in chunks; a
target receives the chunks into a staging file, checks size and CRC32C, and ingests it
(`Engine.ingest`: one MANIFEST edit, last-writer-wins kept). The driver relays the chunks
(limedb.cluster.table_streamer), as it relays key batches.

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
- TABLE_DROP `[u64 id]` -> empty: the source's (and the target's) file of the transfer goes.
A node that does not know these kinds answers NOT_FOUND; the driver then streams keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from pathlib import Path

from crc32c import crc32c

from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets, TimestampRefused
from limedb.cluster.streaming import ANY_SNAPSHOT, floor_of, storage_ranges
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
STALE_S = 600.0


def encode_cut(tid: int, ranges: list[tuple[int, int]], floor: float) -> bytes:
    """A TABLE_CUT of `ranges` (inclusive tokens) from a view taken after `floor` (0: any)."""
    age_us = ANY_SNAPSHOT if floor <= 0 else max(0, int((time.monotonic() - floor) * 1e6))
    return CUT_HEAD.pack(tid, age_us, len(ranges)) + b"".join(RANGE.pack(s, e) for s, e in ranges)


class TableStreams:
    """Serves TABLE_CUT / TABLE_READ / TABLE_DROP (source) and TABLE_WRITE / TABLE_INGEST
    (target)."""

    def __init__(self, engine, data_dir: str | os.PathLike, hlc: HLC, clock: ClockOffsets | None):
        self.engine = engine
        self.hlc = hlc
        self.clock = clock
        self.dir = Path(data_dir) / "streaming"
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._sending: set[int] = set()
        self._receiving: set[int] = set()
        self.counters = {
            "tables_cut": 0,
            "tables_ingested": 0,
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

    def ingest(self, tid: int, size: int, crc: int) -> tuple[int, int]:
        path = self._in(tid)
        try:
            with open(path, "rb") as f:
                data = f.read()
                if len(data) != size or crc32c(data) != crc:
                    raise rpc.RpcError(rpc.FAILED, f"table {tid:016x}: size or checksum differs")
                os.fsync(f.fileno())
            del data
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


def _max_ts(path: Path) -> int:
    return TableReader(RealFS(), str(path), 0, BlockCache(0)).max_ts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
