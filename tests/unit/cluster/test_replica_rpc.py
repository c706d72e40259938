"""A peer's REPLICATE over a real RPC connection (cluster/replica.py, cluster/rpc.py): the
replica answers it from its batch's fsync, without a future per request, and the coordinator's
side hears the reply through `PeerConnection.request_then`. Real sockets on 127.0.0.1, a real
engine in tmp_path with `sync` durability."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets
from limedb.cluster.coordinator import disk_full_reason
from limedb.cluster.replica import Mutation, Replica, decode_applied
from limedb.hlc import HLC, pack, wall_millis
from limedb.storage import Engine, EngineOptions
from support.descriptors import DescriptorLimitedFS

SECRET = "s3cret"


async def _ping(node: str, timeout_s: float) -> bytes:
    raise rpc.PeerUnavailable("no peers in this test")


class _Answers:
    """What `request_then` callbacks heard, by request number."""

    def __init__(self) -> None:
        self.heard: dict[int, tuple[bytes | None, BaseException | None]] = {}
        self.changed = asyncio.Event()

    def callback(self, n: int) -> rpc.Answer:
        def answer(reply: bytes | None, error: BaseException | None) -> None:
            assert n not in self.heard, "answered twice"
            self.heard[n] = (reply, error)
            self.changed.set()

        return answer

    async def wait(self, count: int) -> None:
        while len(self.heard) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


async def _serve(engine: Engine, clock: ClockOffsets | None = None):
    replica = Replica(engine, HLC(), clock)
    server = rpc.RpcServer(secret=SECRET)
    replica.register(server)
    await server.start("127.0.0.1", 0)
    peer = rpc.PeerConnection("127.0.0.1", server.port, SECRET)
    return replica, server, peer


@pytest.fixture
def engine(tmp_path: Path):
    opened = Engine.open(tmp_path / "replica", EngineOptions(offload_workers=0))
    yield opened
    opened.close()


def test_every_replicate_of_one_turn_is_answered_once_durable_with_its_own_reply(engine) -> None:
    async def main() -> None:
        replica, server, peer = await _serve(engine)
        answers = _Answers()
        await peer.call(rpc.PING, b"", 5)  # connected: the next calls take the callback path
        ts = pack(wall_millis(), 0)
        for i in range(50):
            payload = Mutation(b"k%d" % i, b"v%d" % i, ts + i).encode()
            peer.request_then(rpc.REPLICATE, payload, 5, answers.callback(i))
        await answers.wait(50)
        assert all(error is None for _, error in answers.heard.values())
        assert all(decode_applied(reply) == (True, False) for reply, _ in answers.heard.values())
        # Fewer batches than writes: one loop turn's REPLICATEs share one WriteBatch and fsync.
        assert replica.applied == 50 and replica.batches < 50
        for i in range(50):
            stored = replica.read(b"k%d" % i)
            assert stored is not None and stored.value == b"v%d" % i

        # A delete reports whether a live value existed, a put of an older version is not
        # applied; both through the future-based `request` as well.
        deleted = await peer.call(rpc.REPLICATE, Mutation(b"k1", b"", ts + 100, True).encode(), 5)
        assert decode_applied(deleted) == (True, True)
        again = await peer.call(rpc.REPLICATE, Mutation(b"k1", b"", ts + 101, True).encode(), 5)
        assert decode_applied(again) == (True, False)
        older = await peer.call(rpc.REPLICATE, Mutation(b"k2", b"old", ts).encode(), 5)
        assert decode_applied(older)[0] is False
        peer.close()
        await server.stop()

    asyncio.run(main())


def test_a_refused_timestamp_and_a_broken_body_are_answered_with_their_errors(engine) -> None:
    async def main() -> None:
        clock = ClockOffsets(5_000, lambda: [], _ping)
        replica, server, peer = await _serve(engine, clock)
        answers = _Answers()
        await peer.call(rpc.PING, b"", 5)
        ahead = pack(wall_millis() + 3_600_000, 0)
        peer.request_then(
            rpc.REPLICATE, Mutation(b"k", b"v", ahead).encode(), 5, answers.callback(0)
        )
        peer.request_then(rpc.REPLICATE, b"\x00", 5, answers.callback(1))
        ok = Mutation(b"k", b"v", pack(wall_millis(), 0)).encode()
        peer.request_then(rpc.REPLICATE, ok, 5, answers.callback(2))
        await answers.wait(3)
        refused, broken, fine = answers.heard[0][1], answers.heard[1][1], answers.heard[2]
        assert isinstance(refused, rpc.RpcError) and refused.code == rpc.TIMESTAMP_REFUSED
        assert isinstance(broken, rpc.RpcError) and broken.code == rpc.FAILED
        assert fine[1] is None and decode_applied(fine[0]) == (True, False)
        assert replica.read(b"k").value == b"v"
        peer.close()
        await server.stop()

    asyncio.run(main())


def test_a_closed_engine_fails_every_queued_replicate_and_the_connection_lives(engine) -> None:
    async def main() -> None:
        replica, server, peer = await _serve(engine)
        await peer.call(rpc.PING, b"", 5)
        engine.close()
        answers = _Answers()
        for i in range(3):
            payload = Mutation(b"k%d" % i, b"v", pack(wall_millis(), i)).encode()
            peer.request_then(rpc.REPLICATE, payload, 5, answers.callback(i))
        await answers.wait(3)
        for reply, error in answers.heard.values():
            assert reply is None and isinstance(error, rpc.RpcError)
            assert error.code == rpc.FAILED
        assert await peer.call(rpc.PING, b"", 5) == b""
        peer.close()
        await server.stop()

    asyncio.run(main())


def test_request_then_hears_a_lost_connection_and_an_unreachable_peer() -> None:
    async def main() -> None:
        answers = _Answers()
        # Nobody listens on this port (the server was started and stopped).
        server = rpc.RpcServer(secret=SECRET)
        await server.start("127.0.0.1", 0)
        port = server.port
        await server.stop()
        peer = rpc.PeerConnection("127.0.0.1", port, SECRET, connect_timeout_s=1.0)
        peer.request_then(rpc.REPLICATE, b"", 1, answers.callback(0))
        await answers.wait(1)
        assert answers.heard[0][0] is None
        assert isinstance(answers.heard[0][1], rpc.PeerUnavailable)

    asyncio.run(main())


@pytest.mark.parametrize("lacking", ["space", "descriptors"])
def test_a_replica_refusing_a_write_for_its_disk_says_which_resource_ran_out(lacking) -> None:
    """A full disk travels as INSUFFICIENT_STORAGE (the coordinator answers 507 when it costs
    the quorum); out of file descriptors (the disk has room) as UNAVAILABLE, never as a full
    disk."""
    fs = DescriptorLimitedFS()
    fs.only = ".sst"
    options = EngineOptions(
        offload_workers=0, memtable_bytes=2048, background_threads=True, durability="sync"
    )
    engine = Engine.open("/replica", options, fs=fs)

    async def main() -> None:
        replica, server, peer = await _serve(engine)
        ts = pack(wall_millis(), 0)
        if lacking == "space":
            fs.fill()
        else:
            fs.exhausted = True
        refused: list[BaseException] = []
        for i in range(2_000):
            payload = Mutation(b"k%d" % i, b"v" * 100, ts + i).encode()
            try:
                await peer.call(rpc.REPLICATE, payload, 5)
            except rpc.RpcError as exc:
                refused.append(exc)
                if len(refused) >= 3:
                    break
        assert refused, "no write was refused"
        for error in refused:
            assert isinstance(error, rpc.RpcError)
            if lacking == "space":
                assert error.code == rpc.INSUFFICIENT_STORAGE, error
                assert disk_full_reason("n1", error) is not None
            else:
                assert error.code == rpc.UNAVAILABLE, error
                assert error.message.startswith("out of file descriptors: "), error.message
                assert disk_full_reason("n1", error) is None
        peer.close()
        await server.stop()

    try:
        asyncio.run(main())
    finally:
        engine.close()
