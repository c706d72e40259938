"""The write-ahead log: framed, checksummed batch records, and their replay after a restart.

A frame is `[u32 length][u32 crc32c(payload)][u32 length ^ 0xFFFFFFFF][payload]`, the payload
being one or more batches back to back (docs/formats.md). Writers only queue their operations;
the thread that writes the log out encodes everything queued since the last write as one frame,
so a put costs no checksum or framing of its own.
The inverted copy of the length tells a damaged header apart from a torn tail, so a flipped byte
in the middle of the log is reported as corruption instead of silently ending the replay.
The MANIFEST uses the same framing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from crc32c import crc32c

from .errors import CorruptionError
from .record import Rec

FRAME = struct.Struct("<III")
FRAME_BYTES = FRAME.size
LEN_MASK = 0xFFFFFFFF
BATCH_HEADER = struct.Struct("<QI")  # sequence number, op count
OP_HEADER = struct.Struct("<BQQII")  # flags, ts, expires_at_ms, key length, value length
# A batch of exactly one op, encoded with one pack call (the hot path of `Engine.put`).
SINGLE = struct.Struct("<QIBQQII")


def encode_frame(payload: bytes) -> bytes:
    n = len(payload)
    return FRAME.pack(n, crc32c(payload), n ^ LEN_MASK) + payload


def encode_batch(seq: int, ops: list[tuple[bytes, Rec]]) -> bytes:
    parts = [BATCH_HEADER.pack(seq, len(ops))]
    for key, (ts, value, flags, exp) in ops:
        parts.append(OP_HEADER.pack(flags, ts, exp, len(key), len(value)))
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def decode_batches(
    payload: bytes, path: str, offset: int
) -> list[tuple[int, list[tuple[bytes, Rec]]]]:
    """Every batch of one frame payload: [(seq, [(key, rec), ...]), ...]."""
    out = []
    pos = 0
    end = len(payload)
    unpack = OP_HEADER.unpack_from
    op_size = OP_HEADER.size
    try:
        while pos < end:
            seq, count = BATCH_HEADER.unpack_from(payload, pos)
            pos += BATCH_HEADER.size
            ops = []
            for _ in range(count):
                flags, ts, exp, klen, vlen = unpack(payload, pos)
                pos += op_size
                key = payload[pos : pos + klen]
                pos += klen
                value = payload[pos : pos + vlen]
                pos += vlen
                ops.append((key, (ts, value, flags, exp)))
            if pos > end:
                raise ValueError("batch runs past the end of its frame")
            out.append((seq, ops))
    except (struct.error, ValueError) as exc:
        raise CorruptionError(path, offset, f"undecodable batch record ({exc})") from None
    return out


def encode_items(items: list) -> bytes:
    """One frame holding every queued item: an encoded batch (bytes) or a single put tuple
    (seq, flags, ts, expires_at_ms, key, value)."""
    parts: list[bytes] = []
    append = parts.append
    pack = SINGLE.pack
    for item in items:
        if type(item) is bytes:
            append(item)
        else:
            seq, flags, ts, exp, key, value = item
            append(pack(seq, 1, flags, ts, exp, len(key), len(value)))
            append(key)
            append(value)
    return encode_frame(b"".join(parts))


@dataclass
class FrameScan:
    payloads: list[tuple[int, bytes]]  # (offset of the frame, payload)
    valid_end: int  # offset just past the last good frame
    torn: bool  # the file ends in an incomplete frame (a torn tail)


def scan_frames(data: bytes, path: str, *, repair: bool = False) -> FrameScan:
    """Split a log into payloads; a torn tail ends the scan, damage before it raises.

    With `repair`, damage also just ends the scan (everything after it is dropped).
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    end = len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < FRAME_BYTES:
            return FrameScan(out, pos, True)
        n, crc, inv = FRAME.unpack_from(data, pos)
        if n ^ LEN_MASK != inv:
            if data[pos:].count(0) == end - pos:  # zero-filled tail: preallocated, never written
                return FrameScan(out, pos, True)
            if repair:
                return FrameScan(out, pos, True)
            raise CorruptionError(path, pos, "frame header damaged (length check failed)")
        body = pos + FRAME_BYTES
        if body + n > end:
            return FrameScan(out, pos, True)
        payload = bytes(view[body : body + n])
        if crc32c(payload) != crc:
            if body + n == end or repair:
                return FrameScan(out, pos, True)
            raise CorruptionError(path, pos, "frame checksum mismatch")
        out.append((pos, payload))
        pos = body + n
    return FrameScan(out, pos, False)


def replay(
    data: bytes, path: str, *, repair: bool = False
) -> tuple[list[tuple[int, list]], FrameScan]:
    """Decode every batch of one WAL file: [(seq, [(key, rec), ...]), ...]."""
    scan = scan_frames(data, path, repair=repair)
    batches = []
    for offset, payload in scan.payloads:
        try:
            batches.extend(decode_batches(payload, path, offset))
        except CorruptionError:
            if not repair:
                raise
            scan.torn = True
            break
    return batches, scan


class WalWriter:
    """One WAL file being appended to; writers queue items until the syncer writes them out.

    `written` ends the last complete frame, `synced` the last fsynced one; `unsynced` keeps the
    frames in between, so that after a failed write or fsync they can be written again to a
    fresh file and this one cut back to `synced` (never appended to again: after a failed
    fsync the page cache may hold bytes the disk never got, and a later fsync would not say so).
    """

    __slots__ = ("file", "file_no", "pending", "pending_bytes", "synced", "unsynced", "written")

    def __init__(self, file, file_no: int, written: int = 0) -> None:  # noqa: ANN001 - fs file
        self.file = file
        self.file_no = file_no
        self.pending: list = []  # encoded batches (bytes) or single-put tuples, see encode_items
        self.pending_bytes = 0
        self.written = written
        self.synced = written
        self.unsynced: list[bytes] = []

    def take(self) -> list:
        """Remove and return the queued items (caller holds the engine's write lock)."""
        items = self.pending
        if items:
            self.pending = []
            self.pending_bytes = 0
        return items
