"""Disk full, for real: a node's data directory on a small tmpfs (tests/support/diskfull.py)
that a ballast file fills and frees while the node runs (issue 11, acceptance 4)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import diskfull, respwire
from support.cluster import Cluster, Node, free_port_pair, loopback_nodes
from support.wait import wait_for

pytestmark = pytest.mark.faults

DISK_BYTES = 32 << 20
LIMEDB = str(Path(sys.executable).with_name("limedb"))


@pytest.fixture
def disks() -> Iterator[list[diskfull.SmallDisk]]:
    """Small disks mounted by the test; every one unmounted at teardown, even on failure."""
    diskfull.sweep()
    mounted: list[diskfull.SmallDisk] = []
    try:
        yield mounted
    finally:
        for disk in mounted:
            disk.unmount()
        assert not any(diskfull.is_mounted(d.path) for d in mounted)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def _small_disk(node: Node, disks: list[diskfull.SmallDisk]) -> diskfull.SmallDisk:
    disk = diskfull.SmallDisk(node.data_dir / "data", DISK_BYTES)
    disks.append(disk.mount())
    return disk


def _put(client: httpx.Client, node: Node, key: str, value: str) -> httpx.Response:
    return client.put(f"{node.url}/v1/kv/{key}", content=value.encode())


def _resp_command(host: str, port: int, *args: str) -> bytes:
    """One RESP command; returns its reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    return respwire.exchange(host, port, request.encode())


def _health(client: httpx.Client, node: Node) -> dict:
    return client.get(f"{node.url}/api/v1/health").json()


def _assert_refused_for_full_disk(response: httpx.Response) -> None:
    assert response.status_code == 507, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1
    assert "disk full" in response.json()["error"]


def _write_resumes_within_5_s(
    client: httpx.Client, node: Node, acked: dict[str, str], key: str
) -> None:
    wait_for(
        lambda: _put(client, node, key, key).status_code < 300,
        5.0,
        f"a write ({key}) to succeed within 5 s of freeing space",
        step_s=0.1,
    )
    acked[key] = key


def _not_reading_back(
    client: httpx.Client, node: Node, acked: dict[str, str], params: dict | None = None
) -> list[str]:
    wrong = []
    for key, value in acked.items():
        r = client.get(f"{node.url}/v1/kv/{key}", params=params)
        if r.status_code != 200 or r.text != value:
            wrong.append(key)
    return wrong


def test_single_node_refuses_writes_with_507_and_resumes_without_a_restart(
    tmp_path: Path, disks: list[diskfull.SmallDisk], client: httpx.Client
) -> None:
    (node,) = loopback_nodes(tmp_path, 1, 70)
    resp_port = free_port_pair(node.host)[0]
    node.env = {"LIMEDB_RESP_PORT": str(resp_port)}
    disk = _small_disk(node, disks)
    node.start()
    try:
        wait_for(lambda: client.get(f"{node.url}/readyz").status_code == 200, 30, "ready")
        acked: dict[str, str] = {}
        for i in range(100):
            assert _put(client, node, f"before-{i}", f"value-{i}").status_code < 300
            acked[f"before-{i}"] = f"value-{i}"

        disk.fill()
        # Writes go on until the WAL has no room; the first one that finds none gets 507.
        value = "v" * 2000
        for i in range(10_000):
            r = _put(client, node, f"full-{i}", value)
            if r.status_code >= 300:
                break
            acked[f"full-{i}"] = value
        else:
            raise AssertionError("the node never noticed the full disk")
        _assert_refused_for_full_disk(r)
        # Every write while the disk is full: 507, at once.
        for i in range(5):
            _assert_refused_for_full_disk(_put(client, node, f"refused-{i}", "x"))
        assert client.delete(f"{node.url}/v1/kv/before-0").status_code == 507
        # RESP: a clear error of its own (docs/redis.md), reads as usual.
        assert _resp_command(node.host, resp_port, "SET", "resp-key", "x").startswith(
            b"-NOSPACE disk full"
        )
        assert _resp_command(node.host, resp_port, "INCR", "resp-counter").startswith(
            b"-NOSPACE disk full"
        )
        assert _resp_command(node.host, resp_port, "GET", "before-1") == b"$7\r\nvalue-1\r\n"
        # Reads keep working; the node stays ready and says why it refuses writes.
        assert _not_reading_back(client, node, acked) == []
        assert client.get(f"{node.url}/readyz").status_code == 200
        health = _health(client, node)
        assert health["status"] == "degraded"
        assert health["disk"]["full"] and health["disk"]["readOnly"]
        assert "No space left" in health["disk"]["reason"]
        assert health["disk"]["refusedWrites"] >= 6
        metrics = client.get(f"{node.url}/metrics").text
        assert "limedb_storage_disk_full 1.0" in metrics
        status = subprocess.run(
            [LIMEDB, "status", "--url", node.url], capture_output=True, text=True, timeout=60
        )
        assert "disk full, writes refused (507)" in status.stdout, status.stdout + status.stderr

        # Space freed: writes resume by themselves within 5 s, no restart.
        disk.free()
        _write_resumes_within_5_s(client, node, acked, "after-free")
        for i in range(50):
            assert _put(client, node, f"after-{i}", f"a{i}").status_code < 300
            acked[f"after-{i}"] = f"a{i}"
        health = _health(client, node)
        assert health["status"] == "healthy" and not health["disk"]["full"]
        assert "limedb_storage_disk_full 0.0" in client.get(f"{node.url}/metrics").text

        # Nothing acknowledged is lost: not across a restart either.
        node.stop()
        node.start()
        wait_for(lambda: client.get(f"{node.url}/readyz").status_code == 200, 30, "restart")
        assert _not_reading_back(client, node, acked) == []

        # A node started on a full disk comes up read-only: reads work, writes get 507.
        node.stop()
        disk.fill()
        node.start()
        wait_for(
            lambda: client.get(f"{node.url}/readyz").status_code == 200,
            30,
            lambda: f"ready on a full disk\n{node.log_tail()}",
        )
        assert _not_reading_back(client, node, acked) == []
        health = _health(client, node)
        assert health["disk"]["full"] and health["status"] == "degraded"
        assert "opened on a full disk" in health["disk"]["reason"]
        _assert_refused_for_full_disk(_put(client, node, "while-read-only", "x"))
        disk.free()
        _write_resumes_within_5_s(client, node, acked, "after-read-only")
        node.stop()
        node.start()
        wait_for(lambda: client.get(f"{node.url}/readyz").status_code == 200, 30, "restart")
        assert _not_reading_back(client, node, acked) == []
    finally:
        node.stop()


def test_cluster_keeps_quorum_writes_and_the_full_replica_catches_up_by_hints(
    tmp_path: Path, disks: list[diskfull.SmallDisk], client: httpx.Client
) -> None:
    nodes = loopback_nodes(tmp_path, 3, 80)
    full, second = nodes[2], nodes[1]
    disk = _small_disk(full, disks)
    second_disk = _small_disk(second, disks)
    cluster = Cluster(nodes, client)
    cluster.start()
    try:
        acked: dict[str, str] = {}
        for i in range(60):
            node = nodes[i % 3]
            assert _put(client, node, f"before-{i}", f"b{i}").status_code < 300
            acked[f"before-{i}"] = f"b{i}"
        disk.fill()
        # Quorum writes through every node succeed, the full one's included.
        for i in range(300):
            node = nodes[i % 3]
            r = _put(client, node, f"during-{i}", f"d{i}-" + "x" * 200)
            assert r.status_code < 300, (node.url, r.status_code, r.text)
            acked[f"during-{i}"] = f"d{i}-" + "x" * 200
        health = _health(client, full)
        assert health["disk"]["full"], health["disk"]
        assert health["storage"]["cluster"]["replica_writes_disk_full"] >= 1
        assert client.get(f"{full.url}/readyz").status_code == 200
        for node in nodes:
            assert _not_reading_back(client, node, acked) == []

        one = {"consistency": "one"}
        assert _not_reading_back(client, full, acked, one), "the full replica took writes?"
        disk.free()
        # The full replica catches up by hints (reads at ONE ask only its own replica, and
        # repair nothing), with no restart.
        wait_for(
            lambda: not _not_reading_back(client, full, acked, one),
            90,
            lambda: (
                f"{len(_not_reading_back(client, full, acked, one))}"
                f" keys missing on the freed replica; hints "
                f"{[_health(client, n)['storage']['cluster']['hints'] for n in nodes]}"
            ),
            step_s=1.0,
        )
        assert not _health(client, full)["disk"]["full"]

        # Two of three disks full: a write cannot reach its quorum because of them: 507.
        disk.fill()
        second_disk.fill()
        # (What the last pages of their WALs still hold is taken first.)
        for i in range(2000):
            r = _put(client, nodes[0], f"filling-{i}", "y" * 1000)
            if r.status_code >= 300:
                break
            acked[f"filling-{i}"] = "y" * 1000
        _assert_refused_for_full_disk(r)
        for i, node in enumerate(nodes):
            refused = _put(client, node, f"no-quorum-{i}", "x" * 4000)
            _assert_refused_for_full_disk(refused)
            assert "replicas acknowledged" in refused.json()["error"]
        for node in nodes:
            assert _not_reading_back(client, node, acked) == []
        disk.free()
        second_disk.free()
        for i in range(30):
            node = nodes[i % 3]
            assert wait_for(
                lambda node=node, i=i: _put(client, node, f"after-{i}", f"a{i}").status_code < 300,
                30,
                f"a write through {node.url} once space is freed",
                step_s=0.2,
            )
            acked[f"after-{i}"] = f"a{i}"
        for replica in (full, second):
            wait_for(
                lambda replica=replica: not _not_reading_back(client, replica, acked, one),
                90,
                f"{replica.url} to hold every acknowledged write",
                step_s=1.0,
            )
    finally:
        cluster.stop()


def test_small_disk_fills_and_frees(tmp_path: Path, disks: list[diskfull.SmallDisk]) -> None:
    disk = diskfull.SmallDisk(tmp_path / "data", 4 << 20)
    disks.append(disk.mount())
    assert diskfull.is_mounted(disk.path)
    assert disk.free_bytes() > 3 << 20
    disk.fill()
    assert disk.free_bytes() == 0
    probe = disk.path / "probe"
    with pytest.raises(OSError) as refused, open(probe, "wb") as f:
        f.write(os.urandom(8192))
        f.flush()
    assert refused.value.errno == errno.ENOSPC
    disk.free()
    assert disk.free_bytes() > 3 << 20
    probe.write_bytes(os.urandom(8192))
    disk.fill(leave_bytes=1 << 20)
    assert 1 << 20 <= disk.free_bytes() <= (1 << 20) + (64 << 10)
    disk.unmount()
    assert not diskfull.is_mounted(disk.path)
