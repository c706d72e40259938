"""Any node serves any key: writes through one node read back through every other node."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from limedb.cluster.ring.placement import Ring
from support.cluster import Cluster

pytestmark = pytest.mark.cluster

# Keys that break a forwarder which does not escape them again, plus ordinary ones.
KEYS = [
    "user:1",
    "key-42",
    "with space",
    "question?mark",
    "hash#tag",
    "percent%20literal",
    "slash/inside",
    "ключ-ünïcødé",
    "amp&and=eq",
    *[f"plain-{i}" for i in range(40)],
]


def _path(key: str) -> str:
    return quote(key, safe="")


def test_every_key_written_through_any_node_reads_back_through_every_node(
    make_cluster,
) -> None:
    cluster: Cluster = make_cluster(3)
    client = cluster.client
    for i, key in enumerate(KEYS):
        writer = cluster.nodes[i % 3]
        response = client.post(f"{writer.url}/api/v1/set", json={"key": key, "value": f"v:{key}"})
        assert response.status_code == 200, response.text
    ring = Ring(cluster.urls, vnodes=256)
    for key in KEYS:
        for node in cluster.nodes:
            response = client.get(f"{node.url}/api/v1/get/{_path(key)}")
            assert response.status_code == 200, (node.url, key, response.text)
            body = response.json()
            assert body["value"] == f"v:{key}"
            # LimeDB reports the key's owner on the ring, whichever node answered.
            assert body["nodeUrl"] == ring.owner_url(key.encode())


def test_each_key_is_stored_on_exactly_its_replicas(make_cluster) -> None:
    cluster: Cluster = make_cluster(3, env={"LIMEDB_REPLICATION_FACTOR": "2"})
    client = cluster.client
    ring = Ring(cluster.urls, vnodes=256)
    for key in KEYS:
        assert client.put(
            f"{cluster.urls[0]}/v1/kv/{_path(key)}", content=b"x" + key.encode()
        ).status_code in (200, 204)
    for key in KEYS:
        holders = set(ring.replica_urls(key.encode(), 2))
        for node in cluster.nodes:
            response = client.get(f"{node.url}/v1/kv/{_path(key)}?consistency=one")
            if node.url in holders:
                assert response.status_code == 200 and response.content == b"x" + key.encode()
            elif response.status_code == 200:
                # A non-replica coordinator forwards; it must not hold a copy of its own.
                assert key not in {k["key"] for k in _local_keys(cluster, node)}


def _local_keys(cluster: Cluster, node) -> list[dict]:
    keys, page = [], 1
    while True:
        body = cluster.client.get(f"{node.url}/api/v1/keys?page={page}&pageSize=100").json()
        keys.extend(body["keys"])
        if page >= body["totalPages"]:
            return keys
        page += 1


def test_delete_through_one_node_is_seen_by_all_and_reports_existence(make_cluster) -> None:
    cluster: Cluster = make_cluster(3)
    client = cluster.client
    a, b, c = cluster.nodes
    assert (
        client.post(f"{a.url}/api/v1/set", json={"key": "gone", "value": "soon"}).status_code == 200
    )
    response = client.delete(f"{b.url}/api/v1/del/gone")
    assert (response.status_code, response.text) == (200, "1")
    for node in cluster.nodes:
        assert client.get(f"{node.url}/api/v1/get/gone").status_code == 404
    response = client.delete(f"{c.url}/api/v1/del/gone")
    assert (response.status_code, response.text) == (200, "0")
