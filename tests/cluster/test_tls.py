"""TLS on every port (issue 16, acceptance 1 and 2): a 3-node cluster with `--tls-mode required`
serves curl, redis-cli, redis-py and the Python client over TLS, refuses plaintext on the HTTP,
RESP and internal RPC ports, keeps out a node whose certificate another CA signed, and picks up
certificates replaced on disk without a restart while clients keep running without a failure.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from limedb.client import Client
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.certs import CA, NodeCert, client_context, issue, make_ca, served_serial
from support.cluster import SECRET, SECRET_HEADERS, Cluster, Node, loopback_nodes
from support.wait import wait_for

NO_RETRY = Retry(NoBackoff(), 0)  # a refused connection is the answer, not a blip
pytestmark = [pytest.mark.cluster, pytest.mark.redis]

FIRST_HOST = 150  # 127.0.0.150-152: apart from make_cluster's and the fleet's addresses
HELLO = 2
REPLY = 0
FRAME = struct.Struct("!IBI")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class TlsCluster:
    cluster: Cluster
    ca: CA
    certs: dict[int, NodeCert]
    resp_ports: dict[int, int]
    base: Path

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    def rotate(self, node: Node, serial: int) -> NodeCert:
        cert = issue(self.ca, self.base / "certs", f"node-{node.index}", [node.host], serial)
        self.certs[node.index] = cert
        return cert


def tls_env(cert: NodeCert, resp_port: int) -> dict[str, str]:
    return {
        "LIMEDB_TLS_CERT": str(cert.cert),
        "LIMEDB_TLS_KEY": str(cert.key),
        "LIMEDB_TLS_CA": str(cert.ca),
        "LIMEDB_TLS_MODE": "required",
        "LIMEDB_RESP_PORT": str(resp_port),
    }


@pytest.fixture(scope="module")
def tls_three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(base / "ca", "cluster-ca")
    nodes = loopback_nodes(base, 3, FIRST_HOST)
    certs, resp_ports = {}, {}
    for node in nodes:
        node.scheme = "https"
    for node in nodes:
        node.seeds = [n.url for n in nodes]
        certs[node.index] = issue(ca, base / "certs", f"node-{node.index}", [node.host], 100)
        resp_ports[node.index] = free_port(node.host)
        node.env = tls_env(certs[node.index], resp_ports[node.index])
    client = httpx.Client(timeout=10.0, headers=SECRET_HEADERS, verify=client_context(ca.cert))
    cluster = Cluster(nodes, client)
    try:
        cluster.start()
        yield TlsCluster(cluster, ca, certs, resp_ports, base)
    finally:
        cluster.stop()
        client.close()


def metric(tls_three: TlsCluster, node: Node, line_start: str) -> float:
    """The value of the /metrics sample that starts with `line_start` (0 when absent)."""
    text = tls_three.cluster.client.get(f"{node.url}/metrics").text
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start)]
    return values[0] if values else 0.0


def _hello(secret: str) -> bytes:
    payload = secret.encode()
    return FRAME.pack(len(payload), HELLO, 1) + payload


def _rpc_hello_reply(sock: socket.socket) -> bytes:
    """What the RPC port answers to a HELLO with the right secret (b'' when it closes)."""
    sock.sendall(_hello(SECRET))
    data = b""
    while len(data) < FRAME.size:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def test_curl_with_the_ca_reads_through_every_node_and_plaintext_http_is_refused(
    tls_three: TlsCluster,
) -> None:
    first, second = tls_three.nodes[0], tls_three.nodes[1]
    ca = str(tls_three.ca.cert)
    put = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", ca, "-X", "PUT", "--data-binary", "over-tls",
         f"{first.url}/v1/kv/tls-key"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    # Written on node 0, read on node 1: the replication between them ran over mutual TLS.
    got = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", ca, f"{second.url}/v1/kv/tls-key"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout == "over-tls"
    # Without the CA, curl does not trust the node; in plaintext the node closes.
    untrusted = subprocess.run(
        ["curl", "-sS", f"{second.url}/v1/kv/tls-key"], capture_output=True, timeout=30
    )
    assert untrusted.returncode == 60  # peer certificate cannot be authenticated
    plain = subprocess.run(
        ["curl", "-sS", f"http://{second.host}:{second.port}/v1/kv/tls-key"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert plain.returncode in (52, 56), plain  # empty reply / connection reset: nothing served
    assert metric(tls_three, second, 'limedb_tls_plaintext_refused_total{listener="http"}') >= 1
    assert metric(tls_three, second, 'limedb_tls_connections_total{listener="internal"') >= 1


def test_redis_cli_and_redis_py_speak_tls_and_plaintext_resp_is_closed(
    tls_three: TlsCluster,
) -> None:
    node = tls_three.nodes[2]
    port = str(tls_three.resp_ports[2])
    ca = str(tls_three.ca.cert)
    cli = ["redis-cli", "-h", node.host, "-p", port]
    assert subprocess.run(
        [*cli, "--tls", "--cacert", ca, "SET", "resp-tls", "v1"],
        capture_output=True, text=True, timeout=30,
    ).stdout.strip() == "OK"  # fmt: skip
    with redis.Redis(
        host=node.host, port=int(port), ssl=True, ssl_ca_certs=ca, socket_timeout=10
    ) as r:
        assert r.get("resp-tls") == b"v1"
        assert r.set("resp-py", "v2")
    other = tls_three.nodes[0]
    with redis.Redis(
        host=other.host,
        port=tls_three.resp_ports[0],
        ssl=True,
        ssl_ca_certs=ca,
        socket_timeout=10,
    ) as r:
        assert r.get("resp-py") == b"v2"
    plain = subprocess.run([*cli, "GET", "resp-tls"], capture_output=True, text=True, timeout=30)
    assert "v1" not in plain.stdout
    with (
        redis.Redis(host=node.host, port=int(port), socket_timeout=10, retry=NO_RETRY) as r,
        pytest.raises(redis.ConnectionError),
    ):
        r.get("resp-tls")


def test_the_python_client_and_the_cli_with_the_ca(tls_three: TlsCluster) -> None:
    urls = [n.url for n in tls_three.nodes]
    ca = str(tls_three.ca.cert)
    with Client(urls[0], ca=ca) as client:
        client.set("py-client", b"secure")
    with Client(urls[2], ca=ca) as client:
        assert client.get("py-client") == b"secure"
    limedb = [str(Path(sys.executable).with_name("limedb"))]
    cli_set = subprocess.run(
        [*limedb, "set", "--url", urls[1], "--ca", ca, "cli-key", "cli-value"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli_set.returncode == 0, cli_set.stderr
    env = {**os.environ, "LIMEDB_CA": ca}
    cli_get = subprocess.run(
        [*limedb, "get", "--url", urls[0], "cli-key"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert cli_get.stdout.strip() == "cli-value", cli_get.stderr
    status = subprocess.run(
        [*limedb, "status", "--url", urls[2]], capture_output=True, text=True, timeout=60, env=env
    )
    assert status.returncode == 0 and all(url in status.stdout for url in urls), status.stdout


def test_rpc_refuses_plaintext_and_certificates_of_another_ca(
    tls_three: TlsCluster, tmp_path: Path
) -> None:
    node = tls_three.nodes[0]
    address = (node.host, node.internal_port)
    ca = tls_three.ca.cert
    # A node of this cluster (its certificate from the cluster CA) gets its HELLO answered.
    member = tls_three.certs[1]
    with (
        socket.create_connection(address, timeout=10) as raw,
        client_context(ca, member).wrap_socket(raw, server_hostname=node.host) as tls,
    ):
        reply = _rpc_hello_reply(tls)
        assert FRAME.unpack_from(reply)[1] == REPLY
    # Plaintext, even with the right secret: closed without a reply.
    with socket.create_connection(address, timeout=10) as raw:
        assert _rpc_hello_reply(raw) == b""
    # No client certificate, or one from another CA, with the right secret: no reply either.
    other_ca = make_ca(tmp_path / "other", "other-ca")
    stranger = issue(other_ca, tmp_path / "other", "stranger", ["127.0.0.1"], 7)
    for cert in (None, stranger):
        with socket.create_connection(address, timeout=10) as raw:
            tls = client_context(ca, cert).wrap_socket(raw, server_hostname=node.host)
            try:
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    assert _rpc_hello_reply(tls) == b""
                    raise ConnectionError("closed without a reply")
            finally:
                tls.close()
    assert metric(tls_three, node, 'limedb_tls_handshake_failures_total{listener="internal"}') >= 2
    assert metric(tls_three, node, 'limedb_tls_plaintext_refused_total{listener="internal"}') >= 1


def test_a_node_with_a_certificate_of_another_ca_cannot_join(
    tls_three: TlsCluster, tmp_path: Path
) -> None:
    other_ca = make_ca(tmp_path / "other", "other-ca")
    host = f"127.0.0.{FIRST_HOST + 3}"
    [stranger] = loopback_nodes(tmp_path, 1, FIRST_HOST + 3, "stranger")
    stranger.scheme = "https"
    stranger.seeds = [n.url for n in tls_three.nodes]
    cert = issue(other_ca, tmp_path / "certs", "stranger", [host], 9)
    stranger.env = {**tls_env(cert, free_port(host)), "LIMEDB_AWAIT_JOIN": "true"}
    stranger.start()
    try:
        insecure = client_context(other_ca.cert)
        wait_for(
            lambda: (
                httpx.get(f"{stranger.url}/livez", verify=insecure, timeout=2).status_code == 200
            ),
            30,
            f"stranger up\n{stranger.log_tail()}",
        )
        client = tls_three.cluster.client
        answer = client.post(
            f"{tls_three.nodes[0].url}/admin/join", json={"node_url": stranger.url}
        )
        assert answer.status_code == 409, answer.text
        assert "cannot reach" in answer.json()["error"]
        status = client.get(f"{tls_three.nodes[0].url}/admin/status").json()
        assert stranger.url not in str(status)
        # Its RPC to the members fails the other way round too, and its log says why.
        wait_for(
            lambda: "presents a certificate this node does not trust" in stranger.log_tail(200),
            30,
            f"the stranger's warning\n{stranger.log_tail()}",
        )
    finally:
        stranger.stop()


class TrafficLoop:
    """Clients writing and reading through every node over HTTPS (fresh connections and kept
    ones) and RESP over TLS until stopped; every failure is kept."""

    def __init__(self, tls_three: TlsCluster) -> None:
        self.tls_three = tls_three
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.done = 0
        self.threads = [
            threading.Thread(target=self._http, args=(True,), daemon=True),
            threading.Thread(target=self._http, args=(False,), daemon=True),
            threading.Thread(target=self._resp, daemon=True),
        ]

    def __enter__(self) -> TrafficLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _http(self, keep_alive: bool) -> None:
        ca = client_context(self.tls_three.ca.cert)
        urls = [n.url for n in self.tls_three.nodes]
        client = httpx.Client(verify=ca, timeout=10)
        i = 0
        while not self.stop_event.is_set():
            url = urls[i % len(urls)]
            key = f"rot-{keep_alive}-{i}"
            try:
                if not keep_alive:
                    client.close()
                    client = httpx.Client(verify=ca, timeout=10)
                assert client.put(f"{url}/v1/kv/{key}", content=b"x").status_code == 200
                assert client.get(f"{url}/v1/kv/{key}").content == b"x"
                self.done += 1
            except Exception as exc:  # every failure counts, whatever it is
                self.failures.append(f"{url} {key}: {exc!r}")
            i += 1
        client.close()

    def _resp(self) -> None:
        node = self.tls_three.nodes[1]
        with redis.Redis(
            host=node.host,
            port=self.tls_three.resp_ports[1],
            ssl=True,
            ssl_ca_certs=str(self.tls_three.ca.cert),
            socket_timeout=10,
        ) as r:
            i = 0
            while not self.stop_event.is_set():
                try:
                    assert r.set(f"rot-resp-{i}", "y")
                    assert r.get(f"rot-resp-{i}") == b"y"
                    self.done += 1
                except Exception as exc:
                    self.failures.append(f"resp {i}: {exc!r}")
                i += 1


def test_certificates_replaced_on_disk_are_served_without_a_restart(
    tls_three: TlsCluster,
) -> None:
    ca = tls_three.ca.cert
    nodes = tls_three.nodes
    pids = [n.proc.pid for n in nodes if n.proc is not None]
    for node in nodes:
        assert served_serial(node.host, node.port, ca) == 100
    with TrafficLoop(tls_three) as traffic:
        wait_for(lambda: traffic.done >= 20, 30, "traffic before the rotation")
        for node in nodes:
            tls_three.rotate(node, 200 + node.index)
        for node in nodes:
            member = tls_three.certs[node.index]
            ports = (node.port, tls_three.resp_ports[node.index], node.internal_port)
            for port in ports:
                wait_for(
                    lambda node=node, port=port, member=member: (
                        served_serial(node.host, port, ca, member) == 200 + node.index
                    ),
                    20,
                    f"{node.host}:{port} serving the new certificate\n{node.log_tail()}",
                )
        after = traffic.done
        wait_for(lambda: traffic.done >= after + 20, 30, "traffic after the rotation")
    assert traffic.failures == []
    for node in nodes:
        serial = format(200 + node.index, "x")
        assert metric(tls_three, node, f'limedb_tls_certificate{{serial="{serial}"}}') == 1
        assert metric(tls_three, node, "limedb_tls_reloads_total") >= 1
        assert metric(tls_three, node, "limedb_tls_certificate_expiry_timestamp_seconds") > 0
    # The same processes: nothing restarted.
    assert [n.proc.pid for n in nodes if n.proc is not None and n.running()] == pids
