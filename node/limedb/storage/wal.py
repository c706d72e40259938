"""The write-ahead log: framed, checksummed batch records, and their replay after a restart.

A frame is `[u32 length][u32 crc32c(payload)][u32 length ^ 0xFFFFFFFF][payload]` (docs/formats.md).
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


def decode_batch(payload: bytes, path: str, offset: int) -> tuple[int, list[tuple[bytes, Rec]]]:
    try:
        seq, count = BATCH_HEADER.unpack_from(payload, 0)
        pos = BATCH_HEADER.size
        ops = []
        unpack = OP_HEADER.unpack_from
        for _ in range(count):
            flags, ts, exp, klen, vlen = unpack(payload, pos)
            pos += OP_HEADER.size
            key = payload[pos : pos + klen]
            pos += klen
            value = payload[pos : pos + vlen]
            pos += vlen
            ops.append((bytes(key), (ts, bytes(value), flags, exp)))
        if pos != len(payload):
            raise ValueError("trailing bytes")
    except (struct.error, ValueError) as exc:
        raise CorruptionError(path, offset, f"undecodable batch record ({exc})") from None
    return seq, ops


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
            batches.append(decode_batch(payload, path, offset))
        except CorruptionError:
            if not repair:
                raise
            scan.torn = True
            break
    return batches, scan


class WalWriter:
    """One WAL file being appended to; frames collect in memory until the syncer writes them."""

    __slots__ = ("file", "file_no", "pending", "pending_bytes", "written")

    def __init__(self, file, file_no: int) -> None:  # noqa: ANN001 - a fs.WritableFile
        self.file = file
        self.file_no = file_no
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.written = 0

    def take(self) -> bytes:
        """Remove and return the buffered frames (caller holds the engine's write lock)."""
        if not self.pending:
            return b""
        data = b"".join(self.pending)
        self.pending = []
        self.pending_bytes = 0
        return data
