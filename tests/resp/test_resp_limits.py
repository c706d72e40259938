"""The RESP listener's share of the node's limits, on real nodes: a node-wide cap on buffered
request bytes (200 clients declaring 60 MB bulks), and connections beyond the descriptor
budget refused with Redis's error while HTTP keeps serving.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest
from respservers import RespEndpoint, limedb_cluster, wait_until
from support.cluster import Cluster
from support.procfs import growth_kib, snapshot

pytestmark = pytest.mark.redis

MIB = 1024 * 1024
CAP = 256 * MIB  # resp_max_buffered_bytes, by default
REFUSAL = b"-ERR max buffered request bytes of all clients reached"


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10.0).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def default_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, RespEndpoint]]:
    """One node with the default RESP limits."""
    with limedb_cluster(tmp_path_factory.mktemp("resp-limits"), 1, 130) as (cluster, endpoints):
        yield cluster, endpoints[0]


def test_200_clients_declaring_60_mb_bulks_stay_under_the_node_wide_cap(default_node) -> None:
    cluster, endpoint = default_node
    node = cluster.nodes[0]
    assert node.proc is not None
    pid = node.proc.pid
    before = snapshot(pid)
    payload = b"x" * (2 * MIB)  # 200 x 2 MiB offered: far more than the cap
    clients: list[socket.socket] = []
    refused = 0
    try:
        for i in range(200):
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=30)
            clients.append(sock)
            header = b"*3\r\n$3\r\nSET\r\n$%d\r\nbulk%d\r\n$60000000\r\n" % (len(str(i)) + 4, i)
            try:
                sock.sendall(header + payload)
            except (BrokenPipeError, ConnectionResetError):
                refused += 1
        buffered = metric(node.url, "limedb_resp_buffered_bytes")
        assert 0 < buffered <= CAP
        grown = growth_kib(pid, before)
        # The cap plus what is not request bytes (readers, sockets, allocator slack).
        assert grown * 1024 < CAP + 64 * MIB, f"the node grew by {grown} KiB"
        # The clients beyond the cap were told why, and closed.
        told = 0
        for sock in clients:
            sock.settimeout(0.05)
            try:
                answer = sock.recv(200)
            except TimeoutError:
                continue  # still waiting for the rest of its bulk: within the cap
            except ConnectionResetError:
                answer = b""
            told += answer.startswith(REFUSAL)
        assert told + refused > 0 and told > 0
        assert metric(node.url, "limedb_resp_buffer_refusals_total") > 0
        # A small command still gets through while the cap is reached by others.
        client = endpoint.client()
        assert client.set("small", "v") is True
        client.close()
    finally:
        for sock in clients:
            sock.close()
    wait_until(
        lambda: metric(node.url, "limedb_resp_buffered_bytes") == 0,
        30,
        "the buffered bytes to be released when the clients left",
    )


def test_resp_connections_beyond_the_descriptor_budget_are_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("resp-nofile")
    # 400 descriptors - fd_reserve 128: room for 272 client connections, HTTP and RESP.
    with limedb_cluster(root, 1, 131, nofile=400) as (cluster, endpoints):
        endpoint, node = endpoints[0], cluster.nodes[0]
        held: list[socket.socket] = []
        try:
            answers = []
            for _ in range(400):
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout=10)
                held.append(sock)
                sock.sendall(b"PING\r\n")
                answers.append(sock.recv(100))
            refusal = b"-ERR max number of clients reached\r\n"
            assert set(answers) == {b"+PONG\r\n", refusal}
            assert 200 < answers.count(b"+PONG\r\n") <= 272
            # HTTP shares the budget: refused cleanly too, never a dropped connection.
            response = httpx.get(node.url + "/api/v1/health", timeout=10.0)
            assert response.status_code == 503 and "error" in response.json()
        finally:
            for sock in held:
                sock.close()
        wait_until(
            lambda: httpx.get(node.url + "/api/v1/health", timeout=10.0).status_code == 200,
            30,
            "HTTP to be served once the RESP clients left",
        )
