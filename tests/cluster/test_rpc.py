"""The internal transport over real TCP sockets: multiplexing, errors, deadlines, the secret."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from limedb.cluster import rpc
from support.rpc_peers import BOOM, ECHO, SLOW, server_and_client, start_server


def test_concurrent_calls_on_one_connection_get_their_own_replies(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            bodies = [f"request-{i}".encode() * (i % 7 + 1) for i in range(500)]
            replies = await asyncio.gather(
                *(client.call("127.0.0.1", server.port, ECHO, b, 5.0) for b in bodies)
            )
            assert replies == [b[::-1] for b in bodies]
            assert len(client._peers) == 1

    run(main())


def test_large_binary_values_cross_intact(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            body = bytes(range(256)) * 4096  # 1 MiB, every byte value
            assert await client.call("127.0.0.1", server.port, ECHO, body, 5.0) == body[::-1]

    run(main())


def test_handler_error_is_reported_and_connection_survives(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            with pytest.raises(rpc.RpcError) as info:
                await client.call("127.0.0.1", server.port, BOOM, b"x", 5.0)
            assert info.value.code == rpc.FAILED and "bad body" in info.value.message
            with pytest.raises(rpc.RpcError) as info:
                await client.call("127.0.0.1", server.port, 99, b"x", 5.0)
            assert info.value.code == rpc.NOT_FOUND
            assert await client.call("127.0.0.1", server.port, ECHO, b"ab", 5.0) == b"ba"

    run(main())


def test_call_times_out_when_the_peer_does_not_answer(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            with pytest.raises(rpc.PeerUnavailable):
                await client.call("127.0.0.1", server.port, SLOW, b"2", 0.1)
            assert await client.call("127.0.0.1", server.port, ECHO, b"ok", 5.0) == b"ko"

    run(main())


def test_unreachable_peer_fails_fast(run) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens here once closed
        client = rpc.RpcClient()
        with pytest.raises(rpc.PeerUnavailable):
            await client.call("127.0.0.1", port, ECHO, b"x", 5.0)
        client.close()

    run(main())


def test_replica_drops_requests_that_waited_unread_past_their_budget(run) -> None:
    """Budgets are relative: a request that waited in the socket while the replica's loop did
    not run (here: blocked 0.3 s) longer than its budget is dropped, one with budget left is
    served, and no wall clock is involved on either side."""

    async def main() -> None:
        server = await start_server()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await asyncio.sleep(0.1)  # the server's stall watch ticks

            async def reply(request_id: int, budget_ms: int) -> tuple[int, int, bytes]:
                body = rpc.DEADLINE.pack(budget_ms) + b"abc"
                writer.write(rpc.encode_frame(ECHO, request_id, body))
                await writer.drain()
                time.sleep(0.3)  # the whole process stalls before the server reads the frame
                length, kind, rid = rpc.HEADER.unpack(await reader.readexactly(9))
                return kind, rid, await reader.readexactly(length)

            kind, request_id, body = await reply(7, 100)
            assert (kind, request_id, rpc.decode_error(body).code) == (rpc.ERROR, 7, rpc.EXPIRED)
            assert server.expired == 1
            await asyncio.sleep(0.1)
            assert await reply(8, 5000) == (rpc.REPLY, 8, b"cba")
            assert server.expired == 1
            writer.close()
        finally:
            await server.stop()

    run(main())


def test_secret_required_connection_without_hello_gets_401_and_is_closed(run) -> None:
    async def main() -> None:
        server = await start_server(secret="s3cret")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(rpc.encode_frame(ECHO, 1, rpc.DEADLINE.pack(0) + b"abc"))
            await writer.drain()
            length, kind, _ = rpc.HEADER.unpack(await reader.readexactly(9))
            error = rpc.decode_error(await reader.readexactly(length))
            assert (kind, error.code) == (rpc.ERROR, rpc.UNAUTHORIZED)
            assert await reader.read() == b""  # closed by the server
            writer.close()
        finally:
            await server.stop()

    run(main())


def test_secret_required_wrong_secret_is_refused_right_secret_served(run) -> None:
    async def main() -> None:
        server = await start_server(secret="s3cret")
        wrong = rpc.RpcClient(secret="guess")
        missing = rpc.RpcClient()
        right = rpc.RpcClient(secret="s3cret")
        try:
            for client in (wrong, missing):
                with pytest.raises(rpc.RpcError) as info:
                    await client.call("127.0.0.1", server.port, ECHO, b"x", 5.0)
                assert info.value.code == rpc.UNAUTHORIZED
            assert await right.call("127.0.0.1", server.port, ECHO, b"xy", 5.0) == b"yx"
            assert server.rejected == 2
        finally:
            for client in (wrong, missing, right):
                client.close()
            await server.stop()

    run(main())


def test_frame_header_layout_is_length_kind_request_id() -> None:
    frame = rpc.encode_frame(rpc.READ, 0x01020304, b"key")
    assert frame == struct.pack("!IBI", 3, rpc.READ, 0x01020304) + b"key"


def test_stopping_the_server_closes_open_peer_connections(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            port = server.port
            assert await client.call("127.0.0.1", port, ECHO, b"ab", 5.0) == b"ba"
            await server.stop()
            with pytest.raises(rpc.PeerUnavailable):
                await client.call("127.0.0.1", port, ECHO, b"ab", 5.0)

    run(main())
