"""A real RpcServer on 127.0.0.1 with test handlers, and a client to it, for the transport tests.

Handlers: ECHO replies with the body reversed (so a reply proves which request it answers),
SLOW sleeps the body's seconds (as text) and then replies b"late", BOOM raises ValueError.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limedb.cluster import rpc

ECHO = 50
SLOW = 51
BOOM = 52


class _CountingConnections(set):
    """The server's connection set, also counting every connection it ever accepted."""

    accepted = 0

    def add(self, item) -> None:
        self.accepted += 1
        super().add(item)


async def start_server(secret: str | None = None) -> rpc.RpcServer:
    """An RpcServer with ECHO, SLOW and BOOM, listening on a free port of 127.0.0.1."""
    server = rpc.RpcServer(secret)
    server._connections = _CountingConnections()
    server.register(ECHO, lambda body: body[::-1])

    async def slow(body: bytes) -> bytes:
        await asyncio.sleep(float(body.decode()))
        return b"late"

    def boom(body: bytes) -> bytes:
        raise ValueError("bad body")

    server.register(SLOW, slow)
    server.register(BOOM, boom)
    await server.start("127.0.0.1", 0)
    return server


def accepted_connections(server: rpc.RpcServer) -> int:
    """How many connections a server from start_server has accepted, closed ones included."""
    assert isinstance(server._connections, _CountingConnections)
    return server._connections.accepted


@asynccontextmanager
async def server_and_client(
    secret: str | None = None,
) -> AsyncIterator[tuple[rpc.RpcServer, rpc.RpcClient]]:
    """A started test server and a client holding the same secret; both closed on exit."""
    server = await start_server(secret)
    client = rpc.RpcClient(secret=secret)
    try:
        yield server, client
    finally:
        client.close()
        await server.stop()
