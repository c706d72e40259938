"""RPC connections that carried requests into silence are replaced, not kept in TCP backoff.

After a partition heals, a kept connection sits in TCP retransmission backoff for tens of
seconds; these tests prove the client drops a connection on which nothing at all arrived since
a timed-out request was sent, keeps one on which a slow request times out while others are
answered, and that every RPC socket has a user timeout and keepalive set.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from limedb.cluster import rpc
from support.rpc_peers import ECHO, SLOW, accepted_connections, server_and_client


def test_connection_silent_since_a_timed_out_request_is_replaced_by_a_fresh_one(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            peer = client.peer("127.0.0.1", server.port)
            assert await peer.call(ECHO, b"x", 2.0) == b"x"
            first = peer._protocol
            with pytest.raises(rpc.PeerUnavailable):
                await peer.call(SLOW, b"3", 0.2)
            assert first is not None and first.closed and first.silent_closes == 1
            # The next call does not wait on the old connection: it connects afresh.
            assert await peer.call(ECHO, b"y", 2.0) == b"y"
            assert peer._protocol is not first
            assert accepted_connections(server) == 2

    run(main())


def test_connection_is_kept_when_replies_arrive_after_a_slow_request_was_sent(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            peer = client.peer("127.0.0.1", server.port)
            slow = peer.request(SLOW, b"3", 0.3)
            await asyncio.sleep(0.05)
            assert await peer.call(ECHO, b"x", 2.0) == b"x"  # traffic after the slow request
            with pytest.raises(rpc.PeerUnavailable):
                await slow
            protocol = peer._protocol
            assert protocol is not None and not protocol.closed
            assert protocol.silent_closes == 0
            assert await peer.call(ECHO, b"y", 2.0) == b"y"
            assert accepted_connections(server) == 1

    run(main())


def test_rpc_sockets_carry_a_user_timeout_and_keepalive(run) -> None:
    async def main() -> None:
        async with server_and_client() as (server, client):
            peer = client.peer("127.0.0.1", server.port)
            await peer.call(ECHO, b"x", 2.0)
            assert peer._protocol is not None and peer._protocol.transport is not None
            sock = peer._protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert user_timeout == rpc.USER_TIMEOUT_MS
            server_side = next(iter(server._connections))
            assert server_side.transport is not None
            server_sock = server_side.transport.get_extra_info("socket")
            assert server_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0

    run(main())
