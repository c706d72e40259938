"""One node with TLS: its HTTP port in mode `on` takes TLS and plaintext on the same port, its
RESP port in `required` only TLS (a listener's own mode beside tls_mode); a SIGTERM still stops
it gracefully with TLS clients connected; certificate files that do not load stop the start
with a message instead of serving plaintext."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import redis
from nodeproc import LIMEDB
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.certs import client_context, issue, make_ca

NO_RETRY = Retry(NoBackoff(), 0)  # a refused connection is the answer, not a blip
pytestmark = pytest.mark.process


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def test_a_listener_in_mode_on_takes_both_and_one_in_required_only_tls(
    node_factory, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "pki", "ca")
    node = node_factory()
    resp_port = _free_port(node.host)
    cert = issue(ca, tmp_path / "pki", "node", [node.host], 5)
    node.env = {
        "LIMEDB_TLS_CERT": str(cert.cert),
        "LIMEDB_TLS_KEY": str(cert.key),
        "LIMEDB_TLS_CA": str(ca.cert),
        "LIMEDB_TLS_MODE": "required",  # RESP (and the internal port) follow it
        "LIMEDB_HTTP_TLS_MODE": "on",  # HTTP has its own: TLS and plaintext
        "LIMEDB_RESP_PORT": str(resp_port),
    }
    node.start()  # waits for /readyz over plaintext HTTP
    https = f"https://{node.host}:{node.port}"
    with httpx.Client(verify=client_context(ca.cert), timeout=10) as secure:
        assert secure.put(f"{https}/v1/kv/both", content=b"ways").status_code == 200
        assert httpx.get(f"{node.url}/v1/kv/both", timeout=10).content == b"ways"
        # The node advertises its https:// URL.
        assert secure.get(f"{https}/admin/node").json()["url"] == https
        with (
            redis.Redis(host=node.host, port=resp_port, socket_timeout=10, retry=NO_RETRY) as plain,
            pytest.raises(redis.ConnectionError),
        ):
            plain.ping()
        with redis.Redis(
            host=node.host,
            port=resp_port,
            ssl=True,
            ssl_ca_certs=str(ca.cert),
            socket_timeout=10,
        ) as tls:
            assert tls.get("both") == b"ways"
            # Clients still connected (HTTPS keep-alive, RESP over TLS): a graceful stop.
            assert node.terminate() == 0


def test_certificate_files_that_do_not_load_stop_the_start(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    cert = issue(ca, tmp_path, "node", ["127.0.0.1"], 1)
    other = issue(ca, tmp_path / "other", "node", ["127.0.0.1"], 2)
    run = subprocess.run(
        [LIMEDB, "serve", "--data-dir", str(tmp_path / "data"), "--resp-port", "0",
         "--port", str(_free_port("127.0.0.1")), "--tls-mode", "required",
         "--tls-cert", str(cert.cert), "--tls-key", str(other.key), "--tls-ca", str(ca.cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "cannot load the TLS certificate" in run.stdout + run.stderr
