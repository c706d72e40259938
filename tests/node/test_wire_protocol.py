"""HTTP/1.1 details of the node's wire-level fast path, spoken over raw sockets to a real node:
pipelining keeps order, keep-alive and close are honoured, oversized bodies are refused without
breaking the connection, and Expect: 100-continue still works."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from limedb.api import create_app
from limedb.api.wire import wire_protocol
from limedb.cluster.local import LocalService
from limedb.config import load_config
from limedb.storage import Engine, EngineOptions
from nodeproc import NodeProcess, free_address
from support.wait import wait_for

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def wire_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("wire")
    node = NodeProcess(data_dir=base / "data", log_path=base / "node.log")
    node.start()
    yield node
    node.stop()


class Conn:
    """A raw HTTP/1.1 connection that reads responses one at a time by Content-Length."""

    def __init__(self, node: NodeProcess) -> None:
        self.sock = socket.create_connection((node.host, node.port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), "connection closed before a response"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside a body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def set_request(key: str, value: str, extra: str = "") -> bytes:
    body = json.dumps({"key": key, "value": value}).encode()
    head = f"POST /api/v1/set HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def get_request(key: str, extra: str = "") -> bytes:
    return f"GET /api/v1/get/{key} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def test_pipelined_requests_are_answered_in_order(wire_node):
    conn = Conn(wire_node)
    try:
        conn.send(
            set_request("pipe", "one")
            + get_request("pipe")
            + b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
            + set_request("pipe", "two")
            + get_request("pipe")
            + get_request("missing-pipe")
        )
        answers = [conn.response() for _ in range(6)]
    finally:
        conn.close()
    assert [a[0] for a in answers] == [200, 200, 200, 200, 200, 404]
    assert answers[0][2] == b"OK"
    assert json.loads(answers[1][2])["value"] == "one"
    assert json.loads(answers[2][2]) == {"status": "alive"}
    assert json.loads(answers[4][2])["value"] == "two"


def test_keep_alive_connection_serves_many_requests(wire_node):
    conn = Conn(wire_node)
    try:
        for i in range(50):
            conn.send(set_request(f"ka-{i}", str(i)))
            assert conn.response()[0] == 200
            conn.send(get_request(f"ka-{i}"))
            status, headers, body = conn.response()
            assert status == 200 and json.loads(body)["value"] == str(i)
            assert headers["content-type"] == "application/json"
            assert "date" in headers
    finally:
        conn.close()


def test_connection_close_and_http_1_0_close_after_the_response(wire_node):
    for request in (
        get_request("anything", "Connection: close\r\n"),
        b"GET /api/v1/get/anything HTTP/1.0\r\n\r\n",
    ):
        conn = Conn(wire_node)
        try:
            conn.send(request)
            status, headers, _ = conn.response()
            assert status == 404
            assert headers.get("connection") == "close"
            assert conn.closed_by_peer()
        finally:
            conn.close()


def test_oversized_body_is_413_and_the_connection_stays_usable(wire_node):
    conn = Conn(wire_node)
    try:
        big = b"x" * (1024 * 1024 + 1)
        conn.send(
            f"PUT /v1/kv/too-big HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n".encode()
            + big
        )
        status, _, body = conn.response()
        assert status == 413 and "error" in json.loads(body)
        conn.send(get_request("too-big"))
        assert conn.response()[0] == 404
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_413(wire_node):
    conn = Conn(wire_node)
    try:
        chunk = b"y" * (512 * 1024)
        framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        conn.send(
            b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
        )
        assert conn.response()[0] == 413
        small = b"5\r\nhello\r\n0\r\n\r\n"
        conn.send(
            b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + small
        )
        assert conn.response()[0] == 200
        conn.send(b"GET /v1/kv/chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.response()[2] == b"hello"
    finally:
        conn.close()


def test_expect_100_continue_is_honoured(wire_node):
    conn = Conn(wire_node)
    try:
        body = json.dumps({"key": "expect", "value": "yes"}).encode()
        conn.send(
            b"POST /api/v1/set HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        status, _, _ = conn.response()
        assert status == 100
        conn.send(body)
        status, _, reply = conn.response()
        assert (status, reply) == (200, b"OK")
    finally:
        conn.close()


def test_head_on_a_hot_route_is_405_without_a_body(wire_node):
    conn = Conn(wire_node)
    try:
        conn.send(b"HEAD /v1/kv/x HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in conn.buffer:
            assert conn._fill()
        head, rest = conn.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 405")
        assert b"allow: get, put, delete" in head.lower()
        assert rest == b""
    finally:
        conn.close()


class TaskBoundService(LocalService):
    """A service whose reads need a current task (as a coordinator's deadlines do)."""

    inline_safe = False

    async def get(self, key, consistency=None):
        async with asyncio.timeout(5):
            return await super().get(key, consistency)


def test_a_service_that_needs_a_task_is_served_from_a_task(tmp_path):
    engine = Engine.open(tmp_path / "data", EngineOptions(durability="none"))
    service = TaskBoundService(engine, node_id="n", node_url="http://n")
    asyncio.run(service.start())
    host, port = free_address()
    app = create_app(service, load_config({"host": host, "port": port}, {}))
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, http=wire_protocol(app.state), lifespan="off",
            log_level="warning",
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10.0, "in-thread server start")
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            assert client.post("/api/v1/set", json={"key": "t", "value": "v"}).text == "OK"
            assert client.get("/api/v1/get/t").json()["value"] == "v"
            assert client.get("/api/v1/get/absent").status_code == 404
    finally:
        server.should_exit = True
        thread.join(10)
        engine.close()
