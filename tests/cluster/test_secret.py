"""Secure by default: the cluster secret guards every internal frame and every admin route, a
cluster member does not start without one (unless told --insecure), a lone node binds loopback
and generates its own, and a join only adds nodes that prove they hold it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from limedb.cluster import rpc
from limedb.cluster.replica import Mutation
from support.cluster import SECRET, SECRET_HEADERS, Cluster, Node, free_port_pair
from support.wait import wait_for

pytestmark = pytest.mark.cluster

LIMEDB = str(Path(sys.executable).with_name("limedb"))
OTHER_SECRET = "correct horse battery staple"


def _exchange(host: str, port: int, *frames: bytes) -> tuple[int, int, bytes, bytes]:
    """Send raw frames; return (kind, error code, message, whatever followed until EOF)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"".join(frames))
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after an error
            data += chunk
    length, kind, _ = rpc.HEADER.unpack_from(data)
    payload = data[rpc.HEADER.size : rpc.HEADER.size + length]
    error = rpc.decode_error(payload)
    return kind, error.code, error.message.encode(), data[rpc.HEADER.size + length :]


def _node_env() -> dict[str, str]:
    """This process's environment without any LimeDB setting (a secret in the caller's shell
    must not make a refusal test pass)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIMEDB_")}


def test_a_cluster_refuses_unauthenticated_admin_requests_and_internal_frames(
    make_cluster,
) -> None:
    cluster: Cluster = make_cluster(3, env={"LIMEDB_CLUSTER_SECRET": OTHER_SECRET})
    a, b, c = cluster.nodes
    # Peers that share the secret gossip (the fixture waited for it) and replicate.
    guarded = {"x-cluster-secret": OTHER_SECRET}
    http = httpx.Client(timeout=10.0)
    assert http.put(f"{a.url}/v1/kv/guarded", content=b"value").status_code < 300
    for node in (b, c):
        response = http.get(f"{node.url}/v1/kv/guarded", params={"consistency": "all"})
        assert (response.status_code, response.content) == (200, b"value")

    # Every admin route that changes or reads the cluster: 401 without the secret (and with a
    # wrong one), a JSON error naming the header.
    changes = [
        ("POST", "/admin/join", {"node_url": "http://127.0.0.1:1"}),
        ("POST", "/admin/leave", {"node": c.url}),
        ("POST", "/admin/replace", {"dead_node": c.url, "new_node_url": "http://127.0.0.1:1"}),
        ("POST", "/admin/replication-factor", {"rf": 1}),
        ("POST", "/admin/repair", {}),
        ("POST", "/admin/verify", {}),
        ("GET", "/admin/verification", None),
        ("GET", "/admin/keys", None),
        ("GET", "/admin/status", None),
    ]
    for method, path, body in changes:
        for headers in ({}, {"x-cluster-secret": "guess"}, SECRET_HEADERS):
            response = http.request(method, f"{b.url}{path}", json=body, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert "X-Cluster-Secret" in response.json()["error"]
    status = http.get(f"{b.url}/admin/status", headers=guarded).json()
    assert status["replication_factor"] == 3 and status["transition"] is None
    assert sorted(m["url"] for m in status["members"]) == sorted(cluster.urls)
    assert http.get(f"{a.url}/admin/keys", headers=guarded).json()["keys"] == ["guarded"]

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
    # A replica write around the coordinator: refused, and written nowhere.
    forged = Mutation(b"forged", b"evil", ts=(time.time_ns() // 1_000_000) << 16).encode()
    for node in cluster.nodes:
        replicate = rpc.encode_frame(rpc.REPLICATE, 1, deadline + forged)
        kind, code, _, _ = _exchange(node.host, node.internal_port, replicate)
        assert (kind, code) == (rpc.ERROR, 401)
    for node in cluster.nodes:
        response = http.get(f"{node.url}/v1/kv/forged", params={"consistency": "one"})
        assert response.status_code == 404, node.url

    # The size is checked from the header, before any payload is buffered: a stranger's
    # 1 MiB frame is refused (413) at once, though not one byte of its payload was sent.
    big_header = rpc.HEADER.pack(1 << 20, rpc.HELLO, 7)
    kind, code, message, rest = _exchange(c.host, c.internal_port, big_header)
    assert (kind, code, rest) == (rpc.ERROR, 413, b"")
    assert b"exceeds 4096" in message
    # After a good HELLO, frames may be large, but never beyond MAX_FRAME.
    good_hello = rpc.encode_frame(rpc.HELLO, 1, OTHER_SECRET.encode())
    huge = rpc.HEADER.pack(rpc.MAX_FRAME + 1, rpc.REPLICATE, 8)
    with socket.create_connection((c.host, c.internal_port), timeout=5) as sock:
        sock.sendall(good_hello + huge)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    length, kind, request_id = rpc.HEADER.unpack_from(data)  # the HELLO's reply
    assert (kind, request_id) == (rpc.REPLY, 1)
    rest = data[rpc.HEADER.size + length :]
    length, kind, request_id = rpc.HEADER.unpack_from(rest)
    error = rpc.decode_error(rest[rpc.HEADER.size : rpc.HEADER.size + length])
    assert (kind, request_id, error.code) == (rpc.ERROR, 8, 413)

    health = http.get(f"{a.url}/api/v1/health").json()
    assert health["storage"]["cluster"]["rpc_rejected"] >= 2
    assert http.get(f"{c.url}/api/v1/health").json()["storage"]["cluster"]["rpc_oversized"] == 2
    assert "limedb_storage_cluster_rpc_oversized 2.0" in http.get(f"{c.url}/metrics").text
    http.close()


def test_serve_with_seeds_and_no_secret_refuses_to_start_and_names_insecure(
    tmp_path: Path,
) -> None:
    host = "127.0.0.71"
    port, internal = free_port_pair(host)
    base = [LIMEDB, "serve", "--host", host, "--port", str(port), "--data-dir", str(tmp_path)]
    env = {**_node_env(), "LIMEDB_RESP_PORT": "0", "LIMEDB_INTERNAL_PORT": str(internal)}
    for extra in (["--seeds", f"http://{host}:{port},http://127.0.0.72:8484"], ["--await-join"]):
        refused = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "--insecure" in refused.stderr and "LIMEDB_CLUSTER_SECRET" in refused.stderr

    # The explicit opt-out starts, says so loudly, and leaves the admin routes open. (Its
    # other seed never starts: it does not wait for it before starting on its empty disk.)
    node = subprocess.Popen(
        [*base, "--seeds", f"http://{host}:{port},http://127.0.0.72:8484"],
        env={**env, "LIMEDB_INSECURE": "true", "LIMEDB_REJOIN_WAIT_MS": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(timeout=2.0) as http:
            wait_for(
                lambda: http.get(f"http://{host}:{port}/admin/status").status_code == 200,
                30,
                "the insecure node's admin routes",
            )
    finally:
        node.terminate()
        output, _ = node.communicate(timeout=30)
    assert output.count("INSECURE: this node runs without a cluster secret") >= 2, output


def test_a_lone_node_binds_loopback_and_guards_admin_routes_with_its_own_secret(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "limedb-data"
    node = subprocess.Popen(
        [LIMEDB, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={**_node_env(), "LIMEDB_RESP_PORT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=2.0) as http:
            wait_for(lambda: http.get(f"{url}/readyz").status_code == 200, 30, "the node")
            # Bound to 127.0.0.1 only: another loopback address of this machine is refused.
            with pytest.raises(httpx.ConnectError):
                http.get(f"http://127.0.0.5:{port}/livez")
            secret_file = data_dir / "cluster-secret"
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
            secret = secret_file.read_text().strip()
            assert len(secret) >= 32
            assert http.get(f"{url}/admin/keys").status_code == 401
            assert http.put(f"{url}/v1/kv/mine", content=b"v").status_code < 300
            keys = http.get(f"{url}/admin/keys", headers={"x-cluster-secret": secret})
            assert keys.json()["keys"] == ["mine"]
        # The CLI finds the secret where a lone node keeps it by default (./limedb-data).
        cli = subprocess.run(
            [LIMEDB, "admin", "status", "--json", "--url", url],
            cwd=tmp_path,
            env=_node_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"replication_factor": 1' in cli.stdout
    finally:
        node.terminate()
        node.wait(30)


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_join_adds_only_nodes_that_prove_the_secret_and_follows_no_redirect(
    make_cluster, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(2)
    a, b = cluster.nodes
    http = cluster.client

    def joiner(host: str, secret: str) -> Node:
        port, internal = free_port_pair(host)
        node = Node(9, host, port, internal, tmp_path / host, seeds=cluster.urls)
        node.env = {"LIMEDB_AWAIT_JOIN": "true", "LIMEDB_CLUSTER_SECRET": secret}
        node.start()
        cluster.nodes.append(node)  # stopped at teardown with the cluster
        wait_for(lambda: http.get(f"{node.url}/readyz").status_code == 200, 30, node.url)
        return node

    stranger = joiner("127.0.0.73", OTHER_SECRET)
    refused = http.post(f"{a.url}/admin/join", json={"node_url": stranger.url})
    assert refused.status_code == 409, refused.text
    assert "did not prove that it belongs to this cluster" in refused.json()["error"]

    # A node of this cluster, but reached through a redirect: not followed, so refused.
    member = joiner("127.0.0.74", SECRET)
    _Redirect.target = member.url
    http_server = ThreadingHTTPServer(("127.0.0.75", 0), _Redirect)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    try:
        via = f"http://127.0.0.75:{http_server.server_address[1]}"
        refused = http.post(f"{b.url}/admin/join", json={"node_url": via})
        assert refused.status_code == 409, refused.text
        assert "answered 302" in refused.json()["error"]
    finally:
        http_server.shutdown()
        http_server.server_close()

    status = http.get(f"{a.url}/admin/status").json()
    assert status["transition"] is None and status["last_transition"] is None
    assert sorted(m["url"] for m in status["members"]) == sorted([a.url, b.url])
    # The same node asked directly proves itself (what a join checks before proposing).
    node_info = http.get(f"{member.url}/admin/node", params={"challenge": "0" * 32}).json()
    assert node_info["node_id"] == member.url and len(node_info["proof"]) == 64
