"""Internal traffic with LIMEDB_CLUSTER_SECRET set: peers authenticate, strangers get 401."""

from __future__ import annotations

import socket

import pytest
from limedb.cluster import rpc
from support.cluster import Cluster

pytestmark = pytest.mark.cluster

SECRET = "correct horse battery staple"


def _exchange(host: str, port: int, *frames: bytes) -> tuple[int, int, bytes, bytes]:
    """Send raw frames; return (kind, error code, message, whatever followed until EOF)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"".join(frames))
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after a 401
            data += chunk
    length, kind, _ = rpc.HEADER.unpack_from(data)
    payload = data[rpc.HEADER.size : rpc.HEADER.size + length]
    error = rpc.decode_error(payload)
    return kind, error.code, error.message.encode(), data[rpc.HEADER.size + length :]


def test_cluster_with_a_secret_replicates_and_refuses_unauthenticated_peers(make_cluster) -> None:
    cluster: Cluster = make_cluster(3, env={"LIMEDB_CLUSTER_SECRET": SECRET})
    client = cluster.client
    a, b, c = cluster.nodes
    # Peers that share the secret gossip (the fixture waited for it) and replicate.
    assert client.put(f"{a.url}/v1/kv/guarded", content=b"value").status_code < 300
    for node in (b, c):
        response = client.get(f"{node.url}/v1/kv/guarded", params={"consistency": "all"})
        assert (response.status_code, response.content) == (200, b"value")

    deadline = rpc.DEADLINE.pack(0)
    # A request without the HELLO frame: 401, then the connection is closed.
    read = rpc.encode_frame(rpc.READ, 1, deadline + b"guarded")
    kind, code, _, rest = _exchange(a.host, a.internal_port, read)
    assert (kind, code, rest) == (rpc.ERROR, 401, b"")
    # A wrong secret, even followed by a request: 401 and closed before the request runs.
    hello = rpc.encode_frame(rpc.HELLO, 1, b"guess")
    kind, code, _, rest = _exchange(a.host, a.internal_port, hello, read)
    assert (kind, code, rest) == (rpc.ERROR, 401, b"")
    # Gossip is internal traffic too.
    gossip = rpc.encode_frame(rpc.GOSSIP, 1, deadline + b'{"type":"syn","from":"x"}')
    kind, code, _, _ = _exchange(b.host, b.internal_port, gossip)
    assert (kind, code) == (rpc.ERROR, 401)

    health = client.get(f"{a.url}/api/v1/health").json()
    assert health["storage"]["cluster"]["rpc_rejected"] >= 2
