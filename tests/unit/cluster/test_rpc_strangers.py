"""The RPC port against connections that never present the cluster secret: they are bounded in
number (the oldest goes when one more arrives) and in time (no HELLO in time, a 401 and the
close), so nobody without the secret can hold a node's descriptors, and a peer holding the
secret still connects and is served while a flood of idle strangers keeps arriving."""

from __future__ import annotations

import asyncio

from limedb.cluster import rpc

SECRET = "the cluster secret"


async def _server(**limits: float) -> rpc.RpcServer:
    server = rpc.RpcServer(secret=SECRET, **limits)  # type: ignore[arg-type]
    server.register(rpc.READ, lambda body: b"echo:" + body)
    await server.start("127.0.0.1", 0)
    return server


async def _until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _refusal(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read what the server sends a refused stranger until it closes: (error code, message)."""
    data = await asyncio.wait_for(reader.read(), 10)
    length, kind, _ = rpc.HEADER.unpack_from(data)
    assert kind == rpc.ERROR
    error = rpc.decode_error(data[rpc.HEADER.size : rpc.HEADER.size + length])
    return error.code, error.message


async def _call(port: int) -> bytes:
    """A peer holding the secret, on a fresh connection: HELLO, then a READ."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(rpc.encode_frame(rpc.HELLO, 1, SECRET.encode()))
        writer.write(rpc.encode_frame(rpc.READ, 2, rpc.DEADLINE.pack(0) + b"key"))
        replies = {}
        while len(replies) < 2:
            header = await asyncio.wait_for(reader.readexactly(rpc.HEADER.size), 10)
            length, kind, request_id = rpc.HEADER.unpack(header)
            replies[request_id] = (kind, await reader.readexactly(length))
        assert replies[1] == (rpc.REPLY, b"")
        assert replies[2][0] == rpc.REPLY
        return replies[2][1]
    finally:
        writer.close()


def test_strangers_beyond_the_cap_close_the_oldest_and_a_peer_still_gets_in() -> None:
    async def main() -> None:
        server = await _server(max_strangers=8)
        try:
            strangers = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
            await _until(lambda: server.strangers == 8, "eight strangers")
            # One more: the oldest is told why and closed; the count stays at the cap.
            strangers.append(await asyncio.open_connection("127.0.0.1", server.port))
            code, message = await _refusal(strangers[0][0])
            assert code == rpc.UNAUTHORIZED and "without the secret" in message
            await _until(lambda: server.strangers == 8 and server.evicted == 1, "the eviction")

            # Strangers keep arriving, one after another, while peers with the secret connect:
            # each peer is served (its HELLO follows its connect; the flood evicts older ones).
            async def flood() -> None:
                for _ in range(60):
                    strangers.append(await asyncio.open_connection("127.0.0.1", server.port))

            flooding = asyncio.create_task(flood())
            answers = [await _call(server.port) for _ in range(5)]
            await flooding
            assert answers == [b"echo:key"] * 5
            assert server.strangers == 8 and server.evicted >= 60
            for _, writer in strangers:
                writer.close()
            await _until(lambda: server.strangers == 0, "closed strangers to be forgotten")
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_stranger_that_sends_no_hello_in_time_is_refused_and_closed() -> None:
    async def main() -> None:
        server = await _server(hello_timeout_s=0.2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            code, message = await _refusal(reader)
            assert code == rpc.UNAUTHORIZED and "in time" in message
            assert server.hello_timeouts == 1 and server.strangers == 0
            writer.close()
            # A peer that presents the secret is no stranger: its connection outlives the
            # timeout and keeps being served.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(rpc.encode_frame(rpc.HELLO, 1, SECRET.encode()))
            header = await reader.readexactly(rpc.HEADER.size)
            assert rpc.HEADER.unpack(header)[1] == rpc.REPLY
            await _until(lambda: server.strangers == 0, "the peer to be known")
            await asyncio.sleep(0.4)  # twice the timeout: nothing may close the peer now
            writer.write(rpc.encode_frame(rpc.READ, 2, rpc.DEADLINE.pack(0) + b"late"))
            header = await asyncio.wait_for(reader.readexactly(rpc.HEADER.size), 10)
            length, kind, _ = rpc.HEADER.unpack(header)
            assert (kind, await reader.readexactly(length)) == (rpc.REPLY, b"echo:late")
            assert server.hello_timeouts == 1
            writer.close()
        finally:
            await server.stop()

    asyncio.run(main())
