"""Users of a 3-node cluster (issue 16, acceptance 3): created through one node, they
authenticate on every node, over HTTP and RESP, with their role enforced, also on a node that
was down when they were made and after its restart; a password change reaches every node."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from limedb.client import Client
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.cluster import SECRET, Cluster, Node, SecretThenUser
from support.transitions import Fleet
from support.wait import wait_for

pytestmark = pytest.mark.cluster

ADMIN = ("admin", "cluster admin pw")
ALICE = ("alice", "alice password")
RITA = ("rita", "rita password")
LATE = ("late", "late password")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def resp(node: Node, user: tuple[str, str]) -> redis.Redis:
    port = int(node.env["LIMEDB_RESP_PORT"])
    return redis.Redis(
        node.host, port, username=user[0], password=user[1], socket_timeout=10,
        retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def status(node: Node, method: str, path: str, user: tuple[str, str], **kwargs) -> int:
    return httpx.request(method, f"{node.url}{path}", auth=user, timeout=10, **kwargs).status_code


def roles_hold_on(node: Node, key: str) -> None:
    """alice (readwrite) writes, rita (read) reads but cannot write, neither administers, a
    wrong password is refused: over HTTP and RESP on `node`."""
    assert status(node, "PUT", f"/v1/kv/{key}", ALICE, content=b"from alice") == 200
    assert status(node, "GET", f"/v1/kv/{key}", RITA) == 200
    assert status(node, "PUT", f"/v1/kv/{key}", RITA, content=b"x") == 403
    assert status(node, "GET", "/admin/status", ALICE) == 403
    assert status(node, "GET", f"/v1/kv/{key}", (ALICE[0], "wrong password")) == 401
    with resp(node, ALICE) as alice:
        assert alice.set(f"{key}-resp", "v") is True
    with resp(node, RITA) as rita:
        assert rita.get(f"{key}-resp") == b"v"
        with pytest.raises(redis.exceptions.NoPermissionError):
            rita.set(f"{key}-resp", "x")
    with pytest.raises(redis.exceptions.AuthenticationError, match="WRONGPASS|invalid username"):
        resp(node, (RITA[0], "wrong password")).ping()


@pytest.fixture
def admin_http() -> Iterator[httpx.Client]:
    """What the cluster helpers poll with: the secret until users exist, then `admin`."""
    with httpx.Client(timeout=10.0, auth=SecretThenUser(ADMIN)) as client:
        yield client


def test_users_made_on_one_node_authenticate_on_every_node_also_after_a_restart(
    make_cluster, admin_http
):
    env = {"LIMEDB_AUTH_MODE": "required", "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[1]}
    cluster: Cluster = make_cluster(3, env=env, start=False)
    # With auth required and users made, the secret opens no HTTP route (limedb.api.access).
    cluster.client = admin_http
    for node in cluster.nodes:
        node.env["LIMEDB_RESP_PORT"] = str(free_port(node.host))
    cluster.start()
    a, b, c = cluster.nodes
    # Every node bootstraps `admin` once a quorum answers; all agree on the password.
    for node in cluster.nodes:
        wait_for(
            lambda node=node: status(node, "GET", "/admin/users", ADMIN) == 200,
            30,
            f"the bootstrapped admin on {node.url}",
        )
    with Client(a.url, user=ADMIN[0], password=ADMIN[1]) as admin:
        admin.add_user(ALICE[0], "readwrite", ALICE[1])
    with Client(b.url, user=ADMIN[0], password=ADMIN[1]) as admin:
        admin.add_user(RITA[0], "read", RITA[1])
    for i, node in enumerate(cluster.nodes):
        roles_hold_on(node, f"everywhere-{i}")

    # A user made while a node is down authenticates there once it is back (its copy came by
    # hint or by the quorum read), and so does everyone after its restart.
    c.stop()
    with Client(a.url, user=ADMIN[0], password=ADMIN[1]) as admin:
        admin.add_user(LATE[0], "read", LATE[1])
    c.start()
    cluster.wait_ready([a, b, c])
    assert status(c, "GET", "/v1/kv/everywhere-0", LATE) == 200
    assert status(c, "PUT", "/v1/kv/everywhere-0", LATE, content=b"x") == 403
    roles_hold_on(c, "after-restart")

    # A password changed through one node is the only one any node accepts within the cache
    # time (auth_cache_ms, 1 s), including nodes that had the old one cached.
    with Client(c.url, user=ADMIN[0], password=ADMIN[1]) as admin:
        admin.set_password(ALICE[0], "alice new password")
    assert status(c, "GET", "/v1/kv/everywhere-0", (ALICE[0], "alice new password")) == 200
    assert status(c, "GET", "/v1/kv/everywhere-0", ALICE) == 401  # at once where it was made
    for node in cluster.nodes:
        wait_for(
            lambda node=node: (
                status(node, "GET", "/v1/kv/everywhere-0", ALICE) == 401
                and status(node, "GET", "/v1/kv/everywhere-0", (ALICE[0], "alice new password"))
                == 200
            ),
            10,
            f"{node.url} to take alice's new password and refuse the old one",
        )


def test_once_users_exist_admin_routes_and_their_fan_out_need_an_admin_user(tmp_path: Path):
    """The cluster secret stops opening /admin once the first user exists (401 that says what
    is needed); an admin user joins a node (the join's identity check and the ring change
    reach other nodes) and reads every member's stats through one node (it asks the others
    with the caller's credentials)."""
    env = {"LIMEDB_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[1], "LIMEDB_REPLICATION_FACTOR": "2"}
    fleet = Fleet(tmp_path, env, first_host=200, admin=ADMIN)
    try:
        a, b = fleet.bootstrap(2)
        wait_for(lambda: status(a, "GET", "/admin/users", ADMIN) == 200, 30, "the first admin")
        secret = {"x-cluster-secret": SECRET}
        for node in (a, b):
            refused = httpx.get(f"{node.url}/admin/status", headers=secret, timeout=10)
            assert refused.status_code == 401, refused.text
            assert "admin credentials required" in refused.json()["error"]
        with Client(a.url, user=ADMIN[0], password=ADMIN[1]) as admin:
            admin.add_user(ALICE[0], "readwrite", ALICE[1])
        assert status(a, "POST", "/admin/join", ALICE, json={"node_url": "http://x"}) == 403

        c = fleet.start_joiner()
        assert fleet.join(c)["phase"] == "done"
        members = {m["node_id"] for m in fleet.status(c)["members"]}
        assert len(members) == 3
        stats = httpx.get(f"{c.url}/admin/cluster-stats", auth=ADMIN, timeout=10)
        assert stats.status_code == 200, stats.text
        nodes = stats.json()["nodes"]
        assert len(nodes) == 3 and all(n["reachable"] for n in nodes), nodes
        stats = httpx.get(f"{c.url}/admin/cluster-stats", headers=secret, timeout=10)
        assert stats.status_code == 401
    finally:
        fleet.stop()
