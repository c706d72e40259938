"""The `limedb get/set/del` commands and the Python clients against a real node process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from limedb.client import AsyncClient, BadRequest, Client, KeyNotFound, Unavailable

pytestmark = pytest.mark.process

LIMEDB = str(Path(sys.executable).with_name("limedb"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LIMEDB, *args], capture_output=True, text=True, timeout=30)


def test_cli_set_get_del_round_trip(module_node):
    assert cli("set", "--url", module_node.url, "greeting key", "hello world").returncode == 0
    got = cli("get", "--url", module_node.url, "greeting key")
    assert (got.returncode, got.stdout) == (0, "hello world\n")
    assert cli("del", "--url", module_node.url, "greeting key").returncode == 0
    missing = cli("get", "--url", module_node.url, "greeting key")
    assert missing.returncode == 1
    assert "key not found" in missing.stderr


def test_cli_del_of_a_missing_key_exits_1(module_node):
    result = cli("del", "--url", module_node.url, "never-there")
    assert result.returncode == 1
    assert "key not found" in result.stderr


def test_cli_serve_refuses_invalid_settings_naming_them(tmp_path):
    result = cli("serve", "--port", "8484", "--durability", "sync", "--vnodes", "-3")
    assert result.returncode == 2
    assert "vnodes" in result.stderr


def test_client_round_trips_bytes_ttl_batch_and_health(module_node):
    with Client(module_node.url) as client:
        ts = client.set("bin/ary?#%", b"\x00\x01\xff")
        assert ts > 0
        assert client.get("bin/ary?#%") == b"\x00\x01\xff"
        assert client.delete("bin/ary?#%") is True
        assert client.delete("bin/ary?#%") is False
        with pytest.raises(KeyNotFound):
            client.get("bin/ary?#%")
        values = client.batch(get=["b1", "nope"], put={"b1": b"\xfe\xed"})
        assert values == {"b1": b"\xfe\xed", "nope": None}
        assert client.health()["status"] == "healthy"


def test_client_reports_refused_requests_as_bad_request(module_node):
    with Client(module_node.url) as client:
        with pytest.raises(BadRequest) as oversized:
            client.set("big", b"x" * (1024 * 1024 + 1))
        assert oversized.value.status == 413
        with pytest.raises(BadRequest):
            client.set("k" * 1025, b"v")


def test_async_client_round_trip(module_node):
    async def scenario() -> tuple[bytes, bool]:
        async with AsyncClient(module_node.url) as client:
            await client.set("async-key", "v")
            value = await client.get("async-key")
            existed = await client.delete("async-key")
            with pytest.raises(KeyNotFound):
                await client.get("async-key")
            return value, existed

    assert asyncio.run(scenario()) == (b"v", True)


class _FlakyNode(BaseHTTPRequestHandler):
    """Answers 503 with Retry-After to the first `failures` requests, then 200."""

    failures = 2
    seen = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen += 1
        if type(self).seen <= self.failures:
            body = b'{"error":"quorum not reached"}'
            self.send_response(503)
            self.send_header("Retry-After", "0")
        else:
            body = b"value"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server():
    _FlakyNode.seen = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_retries_503_then_succeeds(flaky_server):
    with Client(flaky_server, retries=3, backoff=0.01) as client:
        assert client.get("k") == b"value"
    assert _FlakyNode.seen == 3


def test_client_gives_up_with_unavailable_after_its_retries(flaky_server):
    _FlakyNode.failures = 10
    try:
        with Client(flaky_server, retries=1, backoff=0.01) as client, pytest.raises(Unavailable):
            client.get("k")
        assert _FlakyNode.seen == 2
    finally:
        _FlakyNode.failures = 2


def test_client_reports_an_unreachable_node_as_unavailable():
    client = Client("http://127.0.0.1:9", retries=1, backoff=0.01)
    with client, pytest.raises(Unavailable):
        client.get("k")
