"""Connection-level behaviour of the RESP listener: handshakes, introspection, SCAN, limits.

The limits run against a node of their own (password, 3 clients, 1 s idle timeout, 64 KiB
requests) so that they do not disturb the shared fixtures.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis
from respservers import RespEndpoint, limedb_cluster, wait_until
from support.respwire import exchange

pytestmark = pytest.mark.redis

PASSWORD = "s3cret"


def raw(endpoint: RespEndpoint, payload: bytes, *, expect_close: bool = False) -> bytes:
    """Send bytes on a fresh socket and read the answer (until close, if it closes)."""
    return exchange(endpoint.host, endpoint.port, payload, expect_close=expect_close)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RespEndpoint]:
    env = {
        "LIMEDB_RESP_PASSWORD": PASSWORD,
        "LIMEDB_RESP_MAX_CLIENTS": "3",
        "LIMEDB_RESP_IDLE_TIMEOUT_S": "1",
        "LIMEDB_RESP_MAX_BULK_BYTES": str(64 * 1024),
        "LIMEDB_MAX_VALUE_BYTES": "1000",
    }
    with limedb_cluster(tmp_path_factory.mktemp("limited"), 1, 90, env) as (_, endpoints):
        yield endpoints[0]


# ---------------------------------------------------------------------------- handshakes


def test_resp3_clients_get_maps_and_nulls(limedb_single) -> None:
    client = limedb_single.client(protocol=3)
    assert client.set("conn:r3", "v") is True
    assert client.get("conn:r3") == b"v"
    assert client.get("conn:none") is None
    hello = client.execute_command("HELLO", "3")
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
    assert raw(limedb_single, b"HELLO 3\r\nGET conn:none\r\n").endswith(b"_\r\n")
    client.close()


def test_hello_refuses_unknown_protocol_versions(limedb_single) -> None:
    assert raw(limedb_single, b"HELLO 4\r\n") == b"-NOPROTO unsupported protocol version\r\n"


def test_inline_commands_as_typed_into_telnet(limedb_single) -> None:
    reply = raw(limedb_single, b"SET conn:inline 42\r\nINCR conn:inline\r\nPING\n")
    assert reply == b"+OK\r\n:43\r\n+PONG\r\n"


def test_client_name_id_and_select(limedb_single) -> None:
    client = limedb_single.client()
    assert client.client_setname("worker-1") is True
    assert client.client_getname() == "worker-1"
    assert isinstance(client.client_id(), int)
    assert client.execute_command("SELECT", "0") in (True, b"OK")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        client.execute_command("SELECT", "1")
    with pytest.raises(redis.ResponseError, match="Client names cannot contain spaces"):
        client.client_setname("two words")
    client.close()


def test_command_introspection_and_config_get(limedb_single) -> None:
    client = limedb_single.client()
    count = client.command_count()
    assert count >= 30
    table = client.command()  # redis-py parses every COMMAND INFO entry
    assert table["get"]["arity"] == 2 and table["mset"]["arity"] == -3
    assert len(table) == count
    docs = raw(limedb_single, b"COMMAND DOCS get\r\n")
    assert docs.startswith(b"*2\r\n$3\r\nget\r\n") and b"summary" in docs
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert "maxclients" in client.config_get("max*")
    client.close()


def test_quit_answers_ok_then_closes(limedb_single) -> None:
    assert raw(limedb_single, b"QUIT\r\nPING\r\n", expect_close=True) == b"+OK\r\n"


def test_protocol_errors_answer_then_close(limedb_single) -> None:
    reply = raw(limedb_single, b"PING\r\n*1\r\n:5\r\n", expect_close=True)
    assert reply.startswith(b"+PONG\r\n-ERR Protocol error")


# ---------------------------------------------------------------------------- SCAN


def test_scan_visits_every_local_key_once(limedb_single) -> None:
    client = limedb_single.client()
    keys = {f"scan:{i}".encode() for i in range(250)}
    client.mset({key: b"v" for key in keys})
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = client.scan(cursor, match="scan:*", count=17)
        seen += batch
        if cursor == 0:
            break
    assert sorted(seen) == sorted(keys)
    assert client.dbsize() >= 250
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        client.scan(987654321)
    client.close()


# ---------------------------------------------------------------------------- limits


def test_password_required_before_any_command(limited: RespEndpoint) -> None:
    assert raw(limited, b"GET x\r\n") == b"-NOAUTH Authentication required.\r\n"
    wrong = raw(limited, b"AUTH nope\r\n")
    assert wrong.startswith(b"-WRONGPASS")
    client = limited.client()  # redis-py sends AUTH with the password
    assert client.set("limits:auth", "ok") is True
    assert client.get("limits:auth") == b"ok"
    client.close()
    hello = raw(limited, b"HELLO 3 AUTH default " + PASSWORD.encode() + b"\r\nPING\r\n")
    assert hello.startswith(b"%7\r\n") and hello.endswith(b"+PONG\r\n")


def test_commands_that_change_the_node_need_the_password(
    limedb_single, limited: RespEndpoint
) -> None:
    # No password configured: a loopback client may read and write keys, and read CONFIG,
    # but not run anything that changes the node or more than the keys it names.
    for command in (b"CONFIG SET maxclients 5", b"CONFIG RESETSTAT", b"FLUSHALL", b"FLUSHDB"):
        reply = raw(limedb_single, command + b"\r\n")
        assert reply.startswith(b"-NOPERM ") and b"--resp-password" in reply, (command, reply)
    assert raw(limedb_single, b"SET admin:k v\r\nGET admin:k\r\n") == b"+OK\r\n$1\r\nv\r\n"
    assert raw(limedb_single, b"CONFIG GET protected-mode\r\n").endswith(b"$3\r\nyes\r\n")
    # With the password the gate opens (and LimeDB says what it does not support).
    auth = b"AUTH " + PASSWORD.encode() + b"\r\n"
    assert raw(limited, auth + b"FLUSHALL\r\n") == (
        b"+OK\r\n-ERR FLUSHALL is not supported by LimeDB: delete keys by name (DEL, UNLINK)\r\n"
    )
    assert b"-ERR CONFIG SET is not supported" in raw(limited, auth + b"CONFIG SET timeout 5\r\n")


def connected_clients(endpoint: RespEndpoint) -> int:
    client = endpoint.client()
    try:
        return int(client.info("clients")["connected_clients"])
    finally:
        client.close()


def test_connections_beyond_max_clients_are_refused(limited: RespEndpoint) -> None:
    # Connections of earlier tests may take a moment to be gone on the server side.
    wait_until(lambda: connected_clients(limited) == 1, 10, "earlier clients to disconnect")
    held = [socket.create_connection((limited.host, limited.port)) for _ in range(3)]
    try:
        for sock in held:  # each of them is served
            sock.sendall(b"AUTH " + PASSWORD.encode() + b"\r\n")
            assert sock.recv(100) == b"+OK\r\n"
        # (Nothing is sent: unread input at close would make the kernel reset the connection.)
        assert raw(limited, b"", expect_close=True) == (b"-ERR max number of clients reached\r\n")
    finally:
        for sock in held:
            sock.close()


def test_idle_clients_are_disconnected_after_the_timeout(limited: RespEndpoint) -> None:
    with socket.create_connection((limited.host, limited.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # the server closed it
        assert time.monotonic() - started >= 0.9


def test_oversized_requests_and_values_get_clear_errors(limited: RespEndpoint) -> None:
    client = limited.client()
    with pytest.raises(redis.ResponseError, match="max_value_bytes is 1000"):
        client.set("limits:big", b"x" * 1001)
    with pytest.raises(redis.ResponseError, match="key is 2000 bytes, the maximum is 1024"):
        client.set(b"k" * 2000, b"v")
    client.set("limits:append", b"x" * 900)
    with pytest.raises(redis.ResponseError, match="exceeds maximum allowed size"):
        client.append("limits:append", b"y" * 200)
    with pytest.raises(redis.ResponseError, match="empty keys"):
        client.set("", "v")
    client.close()
    header = b"AUTH " + PASSWORD.encode() + b"\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n"
    reply = raw(limited, header + b"x" * 70_000, expect_close=True)
    assert reply == b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
