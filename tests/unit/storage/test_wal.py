"""The write-ahead log's framing and replay (storage/wal.py), byte for byte as docs/formats.md
describes them: what a torn tail is (replay stops silently), what corruption is (refused, naming
the file and the frame's offset), and that a crash never splits a batch."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limedb.storage.errors import CorruptionError
from limedb.storage.fs import CrashableMemFS, RealFS
from limedb.storage.record import EXPIRES, TOMBSTONE
from limedb.storage.wal import (
    FRAME_BYTES,
    WalWriter,
    encode_batch,
    encode_frame,
    encode_items,
    replay,
    scan_frames,
)

from .strategies import records

PATH = "/db/000007.log"
# No deadline: a loaded machine makes examples slow, never wrong.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.binary(min_size=0, max_size=40)
recs = records()
ops = st.lists(st.tuples(keys, recs), min_size=1, max_size=6)
# Frames of batches with consecutive sequence numbers, the way the engine writes them.
frame_batches = st.lists(st.lists(ops, min_size=1, max_size=3), min_size=1, max_size=5)


def numbered(frames: list[list[list]]) -> list[list[tuple[int, list]]]:
    seq = 1
    out = []
    for frame in frames:
        batches = []
        for batch_ops in frame:
            batches.append((seq, batch_ops))
            seq += 1
        out.append(batches)
    return out


def encode_log(frames: list[list[tuple[int, list]]]) -> tuple[bytes, list[int]]:
    """The log bytes and the offset of each frame."""
    data = b""
    offsets = []
    for batches in frames:
        offsets.append(len(data))
        data += encode_frame(b"".join(encode_batch(seq, o) for seq, o in batches))
    return data, offsets


def flat(frames: list[list[tuple[int, list]]]) -> list[tuple[int, list]]:
    return [batch for batches in frames for batch in batches]


def three_frames() -> tuple[bytes, list[int], list[list[tuple[int, list]]]]:
    frames = [
        [(1, [(b"a", (10, b"one", 0, 0))])],
        [(2, [(b"b", (11, b"two", 0, 0)), (b"c", (12, b"", TOMBSTONE, 0))])],
        [(3, [(b"d", (13, b"four", EXPIRES, 99))])],
    ]
    data, offsets = encode_log(frames)
    return data, offsets, frames


# ---------------------------------------------------------------------------- the format


def test_a_frame_is_length_crc32c_inverted_length_then_payload():
    payload = b"some payload bytes"
    frame = encode_frame(payload)
    length, crc, inverted = struct.unpack_from("<III", frame)
    assert length == len(payload)
    assert crc == crc32c(payload)
    assert inverted == len(payload) ^ 0xFFFFFFFF
    assert frame[12:] == payload and FRAME_BYTES == 12


def test_a_batch_is_seq_count_then_each_operation_as_documented():
    batch = encode_batch(
        42, [(b"key", (7, b"val", EXPIRES, 1234)), (b"k2", (8, b"", TOMBSTONE, 0))]
    )
    assert struct.unpack_from("<QI", batch) == (42, 2)
    pos = 12
    assert struct.unpack_from("<BQQII", batch, pos) == (EXPIRES, 7, 1234, 3, 3)
    pos += 25
    assert batch[pos : pos + 6] == b"keyval"
    pos += 6
    assert struct.unpack_from("<BQQII", batch, pos) == (TOMBSTONE, 8, 0, 2, 0)
    assert batch[pos + 25 :] == b"k2"


@PROPERTY
@given(frame_batches)
def test_every_batch_written_replays_whole_and_in_order(frames):
    frames = numbered(frames)
    data, _ = encode_log(frames)
    batches, scan = replay(data, PATH)
    assert batches == flat(frames)
    assert not scan.torn and scan.valid_end == len(data)


@PROPERTY
@given(st.lists(st.tuples(keys, recs), min_size=1, max_size=8))
def test_a_queued_single_put_encodes_exactly_as_a_one_operation_batch(puts):
    """The put fast path queues tuples instead of encoded batches; replay cannot tell them
    apart, so a log mixing both replays every write."""
    items: list = []
    expected = []
    for seq, (key, (ts, value, flags, exp)) in enumerate(puts, start=1):
        if seq % 2:
            items.append((seq, flags, ts, exp, key, value))
        else:
            items.append(encode_batch(seq, [(key, (ts, value, flags, exp))]))
        expected.append((seq, [(key, (ts, value, flags, exp))]))
    batches, _ = replay(encode_items(items), PATH)
    assert batches == expected


def test_the_writer_hands_out_what_was_queued_once():
    writer = WalWriter(file=None, file_no=7)
    writer.pending.append(encode_batch(1, [(b"k", (1, b"v", 0, 0))]))
    writer.pending_bytes = 10
    first = writer.take()
    assert len(first) == 1 and writer.pending == [] and writer.pending_bytes == 0
    assert writer.take() == []


# ---------------------------------------------------------------------------- torn tails


@PROPERTY
@given(frame_batches, st.data())
def test_a_log_cut_anywhere_inside_its_last_frame_replays_every_earlier_frame(frames, data):
    frames = numbered(frames)
    log, offsets = encode_log(frames)
    cut = data.draw(st.integers(offsets[-1] + 1, len(log) - 1), label="cut")
    batches, scan = replay(log[:cut], PATH)
    assert batches == flat(frames[:-1])
    assert scan.torn and scan.valid_end == offsets[-1]


@pytest.mark.parametrize("zeros", [1, 11, 12, 4096])
def test_a_zero_filled_tail_is_a_torn_tail_not_corruption(zeros):
    log, offsets, frames = three_frames()
    batches, scan = replay(log + bytes(zeros), PATH)
    assert batches == flat(frames)
    assert scan.torn and scan.valid_end == len(log)


def test_a_checksum_failure_in_the_last_frame_is_a_torn_tail():
    log, offsets, frames = three_frames()
    damaged = bytearray(log)
    damaged[-1] ^= 0x01
    batches, scan = replay(bytes(damaged), PATH)
    assert batches == flat(frames[:-1])
    assert scan.torn and scan.valid_end == offsets[-1]


# ---------------------------------------------------------------------------- corruption


@PROPERTY
@given(st.integers(0, 1), st.data())
def test_a_checksum_failure_before_the_tail_is_refused_naming_the_file_and_frame(frame, data):
    log, offsets, _ = three_frames()
    start, end = offsets[frame] + FRAME_BYTES, offsets[frame + 1]
    pos = data.draw(st.integers(start, end - 1), label="payload byte")
    damaged = bytearray(log)
    damaged[pos] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(CorruptionError) as err:
        replay(bytes(damaged), PATH)
    assert err.value.path == PATH and err.value.offset == offsets[frame]
    assert PATH in str(err.value) and f"offset {offsets[frame]}" in str(err.value)


@PROPERTY
@given(st.integers(0, 2), st.integers(0, 3), st.integers(1, 255))
def test_a_damaged_length_is_refused_instead_of_silently_dropping_the_rest(frame, byte, xor):
    """Without the inverted copy a length pointing past the end would look like a torn tail
    and lose every later frame; even in the last frame it is damage, not a torn write."""
    log, offsets, _ = three_frames()
    damaged = bytearray(log)
    damaged[offsets[frame] + byte] ^= xor
    with pytest.raises(CorruptionError) as err:
        scan_frames(bytes(damaged), PATH)
    assert err.value.offset == offsets[frame]
    assert "length" in err.value.reason


def test_a_payload_that_is_not_whole_batches_is_refused_at_its_frame():
    good = encode_frame(encode_batch(1, [(b"a", (1, b"x", 0, 0))]))
    # The checksum is right, but the batch claims more operations than the payload holds.
    bad = encode_frame(struct.pack("<QI", 2, 3) + b"\x00" * 10)
    with pytest.raises(CorruptionError) as err:
        replay(good + bad + good, PATH)
    assert err.value.path == PATH and err.value.offset == len(good)
    assert "batch" in err.value.reason


def test_repair_keeps_the_batches_before_the_damage_and_drops_the_rest():
    log, offsets, frames = three_frames()
    damaged = bytearray(log)
    damaged[offsets[1] + FRAME_BYTES] ^= 0xFF
    batches, scan = replay(bytes(damaged), PATH, repair=True)
    assert batches == flat(frames[:1])
    assert scan.torn and scan.valid_end == offsets[1]


# ---------------------------------------------------------------------------- real files, crashes


def test_a_log_written_to_a_real_file_replays_after_reopening(tmp_path):
    fs = RealFS()
    path = str(tmp_path / "000001.log")
    writer = WalWriter(fs.create(path), 1)
    writer.pending += [(1, 0, 5, 0, b"k1", b"v1"), encode_batch(2, [(b"k2", (6, b"v2", 0, 0))])]
    writer.file.write(encode_items(writer.take()))
    writer.pending.append((3, TOMBSTONE, 7, 0, b"k1", b""))
    writer.file.write(encode_items(writer.take()))
    writer.file.sync()
    writer.file.close()
    batches, scan = replay(fs.read_file(path), path)
    assert batches == [
        (1, [(b"k1", (5, b"v1", 0, 0))]),
        (2, [(b"k2", (6, b"v2", 0, 0))]),
        (3, [(b"k1", (7, b"", TOMBSTONE, 0))]),
    ]
    assert not scan.torn


@PROPERTY
@given(frame_batches, st.integers(0, 5), st.integers(0, 2**30))
def test_a_crash_keeps_every_synced_batch_and_never_half_an_unsynced_one(frames, synced, seed):
    frames = numbered(frames)
    synced = min(synced, len(frames))
    fs = CrashableMemFS(seed)
    fs.makedirs("/db")
    f = fs.create(PATH)
    fs.fsync_dir("/db")
    for i, batches in enumerate(frames):
        f.write(encode_frame(b"".join(encode_batch(seq, o) for seq, o in batches)))
        if i + 1 == synced:
            f.sync()
    after = fs.crash(tear=True)
    batches, _ = replay(after.read_file(PATH), PATH)
    survived = len(batches)
    assert batches == flat(frames)[:survived]
    assert survived >= len(flat(frames[:synced]))
    # Frames are the unit of a write-out: a batch survives only with its whole frame.
    assert survived in {len(flat(frames[:n])) for n in range(len(frames) + 1)}
