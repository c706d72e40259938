"""Users, roles and credentials on a real node (issue 16, acceptance 3 on one node): HTTP Basic
and Bearer, RESP AUTH and HELLO 3 AUTH through redis-py, the Python client, `limedb user ...`,
and the reserved namespace that holds the users."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from limedb.auth.records import user_key
from limedb.client import Client, Forbidden, Unauthorized
from nodeproc import LIMEDB, NodeProcess
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.wait import wait_for

pytestmark = pytest.mark.process

ADMIN = ("admin", "bootstrap admin pw")
READER = ("reader", "reader password")
WRITER = ("writer", "writer password")
RESERVED = user_key("admin")  # b"\x00limedb/users/admin"


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def limedb_user(node: NodeProcess, *args: str, stdin: str = "", as_user=ADMIN) -> str:
    """`limedb user ARGS` against `node` as `as_user` (credentials in the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMEDB_")}
    env.update({"LIMEDB_URL": node.url, "LIMEDB_USER": as_user[0], "LIMEDB_PASSWORD": as_user[1]})
    done = subprocess.run(
        [LIMEDB, "user", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with auth_mode=required, RESP on, `admin` bootstrapped, and users reader and
    writer added with the CLI."""
    base = tmp_path_factory.mktemp("auth")
    node = NodeProcess(data_dir=base / "data", log_path=base / "node.log")
    node.env = {
        "LIMEDB_AUTH_MODE": "required",
        "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[1],
        "LIMEDB_RESP_PORT": str(free_port(node.host)),
    }
    node.start()
    try:
        wait_for(
            lambda: httpx.get(f"{node.url}/admin/users", auth=ADMIN).status_code == 200,
            30,
            "the bootstrapped admin",
        )
        limedb_user(node, "add", READER[0], "--role", "read", "--password-stdin", stdin=READER[1])
        limedb_user(
            node,
            "add",
            WRITER[0],
            "--role",
            "readwrite",
            "--password-stdin",
            stdin=WRITER[1] + "\n",
        )
        yield node
    finally:
        node.stop()


def resp(node: NodeProcess, user: tuple[str, str] | None = None, **kwargs) -> redis.Redis:
    port = int(node.env["LIMEDB_RESP_PORT"])
    credentials = {"username": user[0], "password": user[1]} if user else {}
    # No retries: redis-py retries a refused AUTH (an AuthenticationError is a ConnectionError)
    # with backoff by default, which only slows a test that expects the refusal.
    never = Retry(NoBackoff(), 0)
    return redis.Redis(node.host, port, socket_timeout=10, retry=never, **credentials, **kwargs)


def test_without_valid_credentials_every_data_route_is_401_with_a_challenge(secured) -> None:
    url = secured.url
    # Once users exist the cluster secret opens no HTTP route, admin or data (limedb.api.access).
    secret = {"x-cluster-secret": (secured.data_dir / "cluster-secret").read_text().strip()}
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{url}/livez").status_code == 200
        assert http.get(f"{url}/readyz").status_code == 200
        refused = [
            http.get(f"{url}/v1/kv/k"),
            http.put(f"{url}/v1/kv/k", content=b"v"),
            http.get(f"{url}/api/v1/get/k"),
            http.post(f"{url}/api/v1/set", json={"key": "k", "value": "v"}),
            http.get(f"{url}/api/v1/keys"),
            http.get(f"{url}/v1/kv/k", auth=(ADMIN[0], "wrong password")),
            http.get(f"{url}/v1/kv/k", auth=("nobody", ADMIN[1])),
            http.get(f"{url}/v1/kv/k", headers={"authorization": "Basic !!!"}),
            http.get(f"{url}/v1/kv/k", headers={"authorization": "Bearer admin.forged"}),
            http.get(f"{url}/admin/status"),
            http.get(f"{url}/admin/status", headers=secret),
            http.get(f"{url}/v1/kv/k", headers=secret),
            http.put(f"{url}/v1/kv/k", content=b"v", headers=secret),
        ]
    for response in refused:
        assert response.status_code == 401, response.request
        assert response.headers["www-authenticate"].startswith('Basic realm="limedb"')
        assert response.json()["error"]


def test_a_write_without_credentials_is_refused_before_its_body_is_sent(secured) -> None:
    request = (
        f"PUT /v1/kv/big HTTP/1.1\r\nHost: {secured.host}\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection((secured.host, secured.port), timeout=10) as sock:
        sock.sendall(request)  # and not one byte of the body
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b"www-authenticate: basic" in head.lower()


def test_a_read_user_cannot_write_and_a_readwrite_user_cannot_administer(secured) -> None:
    url = secured.url
    with httpx.Client(timeout=10) as http:
        assert http.put(f"{url}/v1/kv/roles", content=b"v1", auth=WRITER).status_code == 200
        read = http.get(f"{url}/v1/kv/roles", auth=READER)
        assert (read.status_code, read.content) == (200, b"v1")
        assert http.get(f"{url}/api/v1/get/roles", auth=READER).json()["value"] == "v1"
        for write in (
            http.put(f"{url}/v1/kv/roles", content=b"v2", auth=READER),
            http.delete(f"{url}/v1/kv/roles", auth=READER),
            http.post(f"{url}/api/v1/set", json={"key": "roles", "value": "v2"}, auth=READER),
        ):
            assert write.status_code == 403
            assert "reader has role read" in write.json()["error"]
        for admin_call in (
            http.get(f"{url}/admin/status", auth=WRITER),
            http.get(f"{url}/admin/users", auth=WRITER),
            http.post(f"{url}/admin/repair", json={}, auth=WRITER),
        ):
            assert admin_call.status_code == 403
        assert http.get(f"{url}/admin/status", auth=ADMIN).status_code == 200
        assert http.get(f"{url}/v1/kv/roles", auth=READER).content == b"v1"  # nothing changed


def test_the_python_client_authenticates_with_user_and_password_or_a_token(secured) -> None:
    with Client(secured.url, user=WRITER[0], password=WRITER[1]) as writer:
        writer.set("py-client", b"written")
        assert writer.get("py-client") == b"written"
    with Client(secured.url, user=READER[0], password=READER[1]) as reader:
        assert reader.get("py-client") == b"written"
        with pytest.raises(Forbidden):
            reader.set("py-client", b"refused")
    wrong = Client(secured.url, user=WRITER[0], password="not the password")
    with wrong, pytest.raises(Unauthorized):
        wrong.get("py-client")
    token = limedb_user(secured, "token", READER[0]).strip()
    with Client(secured.url, token=token) as bearer:
        assert bearer.get("py-client") == b"written"
        with pytest.raises(Forbidden):
            bearer.delete("py-client")


def test_redis_clients_authenticate_as_users_and_get_noperm_beyond_their_role(secured) -> None:
    with resp(secured, WRITER) as writer:
        assert writer.set("resp-key", "one") is True
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
            writer.flushall()
    with resp(secured, READER) as reader:
        assert reader.get("resp-key") == b"one"
        with pytest.raises(redis.exceptions.NoPermissionError) as refused:
            reader.set("resp-key", "two")
        assert str(refused.value) == "User reader has no permissions to run the 'set' command"
    # HELLO 3 AUTH user pass: redis-py's handshake with protocol=3.
    with resp(secured, READER, protocol=3) as hello:
        assert hello.get("resp-key") == b"one"
    with pytest.raises(redis.exceptions.AuthenticationError, match="invalid username-password"):
        resp(secured, (READER[0], "wrong password")).ping()
    with pytest.raises(
        redis.exceptions.AuthenticationError, match="authenticated|Authentication required"
    ):
        resp(secured).get("resp-key")
    with resp(secured, WRITER) as writer:
        assert writer.get("resp-key") == b"one"


def test_the_users_namespace_is_neither_readable_writable_nor_listed(secured) -> None:
    url = secured.url
    path = "/v1/kv/%00limedb%2Fusers%2Fadmin"
    with httpx.Client(timeout=10, auth=ADMIN) as http:
        assert http.get(f"{url}{path}").status_code == 403
        assert http.put(f"{url}{path}", content=b"{}").status_code == 403
        assert http.get(f"{url}/api/v1/get/%00limedb%2Fusers%2Fadmin").status_code == 403
        body = {"key": RESERVED.decode(), "value": "{}"}
        assert http.post(f"{url}/api/v1/set", json=body).status_code == 403
        listed = [
            entry["key"] for entry in http.get(f"{url}/api/v1/keys?pageSize=100").json()["keys"]
        ]
        assert listed and not any(key.startswith("\x00") for key in listed)
        admin_keys = http.get(f"{url}/admin/keys").json()["keys"]
        assert admin_keys and not any(key.startswith("\x00") for key in admin_keys)
    with resp(secured, ADMIN) as admin:
        for call in (
            lambda: admin.get(RESERVED),
            lambda: admin.set(RESERVED, b"{}"),
            lambda: admin.delete(b"plain", RESERVED),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError, match="access a key"):
                call()
        assert admin.keys("*") and not any(key.startswith(b"\x00") for key in admin.keys("*"))
        assert not any(key.startswith(b"\x00") for key in admin.scan_iter(count=1000))
    # Still intact: the admin authenticates.
    assert httpx.get(f"{url}/admin/users", auth=ADMIN).status_code == 200


def test_user_cli_lists_changes_passwords_and_removes_users(secured) -> None:
    url = secured.url
    listed = orjson.loads(limedb_user(secured, "list", "--json"))
    roles = {entry["name"]: entry["role"] for entry in listed}
    assert roles == {"admin": "admin", "reader": "read", "writer": "readwrite"}
    limedb_user(
        secured, "add", "temp", "--role", "readwrite", "--password-stdin", stdin="temp password one"
    )
    limedb_user(secured, "passwd", "temp", "--password-stdin", stdin="temp password two")
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{url}/v1/kv/x", auth=("temp", "temp password one")).status_code == 401
        assert http.get(f"{url}/v1/kv/x", auth=("temp", "temp password two")).status_code == 404
        limedb_user(secured, "remove", "temp")
        assert http.get(f"{url}/v1/kv/x", auth=("temp", "temp password two")).status_code == 401
    # A non-admin cannot manage users: the CLI says it was denied (exit 4).
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMEDB_")}
    denied = subprocess.run(
        [LIMEDB, "user", "list", "--url", url, "--user", WRITER[0], "--password", WRITER[1]],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert denied.returncode == 4 and "403" in denied.stderr
    # `limedb admin` authenticates as an admin user the same way.
    status = subprocess.run(
        [LIMEDB, "admin", "--user", ADMIN[0], "--password", ADMIN[1], "status", "--url", url,
         "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0 and orjson.loads(status.stdout)["members"], status.stderr


def test_with_auth_off_anonymous_data_stays_open_but_admin_needs_an_admin_once_users_exist(
    tmp_path: Path,
) -> None:
    node = NodeProcess(data_dir=tmp_path / "data", log_path=tmp_path / "node.log")
    node.start()
    try:
        url = node.url
        secret = (tmp_path / "data" / "cluster-secret").read_text().strip()
        with httpx.Client(timeout=10) as http:
            assert http.put(f"{url}/v1/kv/open", content=b"v").status_code == 200
            assert http.get(f"{url}/v1/kv/open").content == b"v"
            assert http.get(f"{url}/admin/status").status_code == 401
            secret_only = {"x-cluster-secret": secret}
            assert http.get(f"{url}/admin/status", headers=secret_only).status_code == 200
            # The first user is made with the cluster secret (no bootstrap password here).
            made = http.post(
                f"{url}/admin/users",
                json={"name": "ops", "role": "admin", "password": "ops password"},
                headers={"x-cluster-secret": secret},
            )
            assert made.status_code == 201, made.text
            add = {"name": "app", "role": "readwrite", "password": "app password"}
            assert (
                http.post(f"{url}/admin/users", json=add, auth=("ops", "ops password")).status_code
                == 201
            )
            assert http.get(f"{url}/admin/status", auth=("app", "app password")).status_code == 403
            assert http.get(f"{url}/admin/status", auth=("ops", "ops password")).status_code == 200
            # From the first user on, the secret no longer stands in for an admin.
            refused = http.get(f"{url}/admin/status", headers=secret_only)
            assert refused.status_code == 401
            assert "admin credentials required" in refused.json()["error"]
            assert http.get(f"{url}/admin/stats", headers=secret_only).status_code == 401
            assert (
                http.get(f"{url}/admin/status", auth=("ops", "wrong password")).status_code == 401
            )
            # Credentials presented on a data route are held to, even with auth off.
            assert http.get(f"{url}/v1/kv/open", auth=("app", "wrong password")).status_code == 401
            assert http.get(f"{url}/v1/kv/open").content == b"v"
    finally:
        node.stop()
