"""Read repair reaches every replica of a key once a read finds its replicas disagree, not only
the replicas that the read asked: the one it did not ask most likely missed the same write."""

from __future__ import annotations

import httpx
import pytest
from support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster


def _read(client: httpx.Client, url: str, key: str, consistency: str) -> bytes | None:
    response = client.get(f"{url}/v1/kv/{key}", params={"consistency": consistency})
    assert response.status_code in (200, 404), (url, key, response.status_code, response.text)
    return response.content if response.status_code == 200 else None


def _hints_pending(client: httpx.Client, url: str) -> int:
    health = client.get(f"{url}/api/v1/health", timeout=2.0).json()
    return health["storage"]["cluster"]["hints"]["pending"]


def test_a_quorum_read_that_finds_a_stale_replica_repairs_the_unasked_one_too(make_cluster):
    # Hints expire at once, so only read repair can bring the missed write to the others.
    cluster: Cluster = make_cluster(3, env={"LIMEDB_HINT_WINDOW_MS": "1"})
    client = cluster.client
    a, b, c = cluster.nodes
    key = "repair-me"
    put = client.put(f"{a.url}/v1/kv/{key}", content=b"v1", params={"consistency": "all"})
    assert put.status_code in (200, 201, 204), put.text

    # B and C are down (a paused process would still find the write in its socket buffer).
    b.kill()
    c.kill()
    put = client.put(f"{a.url}/v1/kv/{key}", content=b"v2", params={"consistency": "one"})
    assert put.status_code in (200, 201, 204), put.text
    b.start()
    c.start()
    cluster.wait_ready()
    wait_for(lambda: _hints_pending(client, a.url) == 0, 30, "the expired hints to be dropped")
    # Each of the other two still holds the old version on its own (a read at ONE through a
    # replica answers from that replica alone, and repairs nothing).
    assert _read(client, b.url, key, "one") == b"v1"
    assert _read(client, c.url, key, "one") == b"v1"

    # A quorum read through A asks A and one of B and C; it answers the newest version...
    assert _read(client, a.url, key, "quorum") == b"v2"
    # ...and repairs both, the asked replica and the one it did not ask.
    wait_for(
        lambda: (
            _read(client, b.url, key, "one") == b"v2" and _read(client, c.url, key, "one") == b"v2"
        ),
        20,
        "both stale replicas to hold the newest version",
    )
