"""The internal RPC's frame splitter: frames come out whole and in order however TCP cuts the
byte stream (several frames in one read, a frame over many reads, a header cut in two)."""

from __future__ import annotations

import asyncio
import random

from limedb.cluster import rpc


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Recorder(rpc._FramedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.transport = _Transport()  # type: ignore[assignment]
        self.frames: list[tuple[int, int, bytes]] = []
        self.refused: list[int] = []

    def frame_received(self, kind: int, request_id: int, payload: bytes) -> None:
        self.frames.append((kind, request_id, bytes(payload)))

    def frame_too_large(self, request_id: int, length: int) -> None:
        self.refused.append(request_id)
        super().frame_too_large(request_id, length)


def _run(cuts_seed: int, frames: list[tuple[int, int, bytes]]) -> _Recorder:
    async def main() -> _Recorder:
        proto = _Recorder()
        stream = b"".join(rpc.encode_frame(k, r, p) for k, r, p in frames)
        rng = random.Random(cuts_seed)
        i = 0
        while i < len(stream):
            n = rng.choice([1, 2, 5, 9, 13, 40, 200, len(stream)])
            proto.data_received(stream[i : i + n])
            i += n
        return proto

    return asyncio.run(main())


def test_frames_survive_any_cut_of_the_stream() -> None:
    rng = random.Random(7)
    frames = [
        (rng.choice([rpc.REPLY, rpc.READ, rpc.REPLICATE]), i, rng.randbytes(rng.randint(0, 300)))
        for i in range(60)
    ]
    for seed in range(40):
        assert _run(seed, frames).frames == frames


def test_an_oversized_frame_is_refused_before_its_payload_and_nothing_after_it_runs() -> None:
    async def main() -> _Recorder:
        proto = _Recorder()
        proto.max_frame = 100
        ok = rpc.encode_frame(rpc.READ, 1, b"k")
        big = rpc.HEADER.pack(1000, rpc.READ, 2)
        proto.data_received(ok + big + rpc.encode_frame(rpc.READ, 3, b"x"))
        return proto

    proto = asyncio.run(main())
    assert proto.frames == [(rpc.READ, 1, b"k")]
    assert proto.refused == [2]
    assert proto.transport.closed
