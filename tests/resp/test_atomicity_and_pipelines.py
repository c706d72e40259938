"""Atomic read-modify-write across the cluster, and pipelines answered in order.

100 concurrent clients spread over the three nodes increment one counter: every increment
counts exactly once and every reply is distinct, because INCR runs at the key's primary under
its lock wherever it arrives. A 10k-command pipeline comes back complete and in order.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from respservers import limedb_cluster

pytestmark = pytest.mark.redis

CLIENTS = 100
INCRS_EACH = 20


async def _concurrent_increments(endpoints, key: str, command: str = "INCR") -> list[int]:
    clients = [
        aioredis.Redis(host=e.host, port=e.port, socket_timeout=30)
        for e in (endpoints[i % len(endpoints)] for i in range(CLIENTS))
    ]

    async def worker(client: aioredis.Redis) -> list[int]:
        replies = []
        for _ in range(INCRS_EACH):
            if command == "INCR":
                replies.append(await client.incr(key))
            else:
                replies.append(await client.incrby(key, 3))
        return replies

    try:
        results = await asyncio.gather(*(worker(c) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return [reply for replies in results for reply in replies]


def test_100_concurrent_incr_clients_on_three_nodes_count_exactly(limedb_three) -> None:
    _, endpoints = limedb_three
    replies = asyncio.run(_concurrent_increments(endpoints, "atomic:counter"))
    total = CLIENTS * INCRS_EACH
    # Each INCR saw a distinct value: none was lost or applied twice.
    assert sorted(replies) == list(range(1, total + 1))
    for endpoint in endpoints:
        assert int(endpoint.client().get("atomic:counter")) == total


def test_incrby_from_every_node_is_atomic_on_a_single_node_too(limedb_single) -> None:
    replies = asyncio.run(_concurrent_increments([limedb_single], "atomic:by3", "INCRBY"))
    assert sorted(replies) == list(range(3, 3 * CLIENTS * INCRS_EACH + 1, 3))


def test_set_nx_has_exactly_one_winner_across_nodes(limedb_three) -> None:
    _, endpoints = limedb_three

    async def race() -> list[bool | None]:
        clients = [aioredis.Redis(host=e.host, port=e.port) for e in endpoints * 10]
        try:
            return await asyncio.gather(
                *(c.set("atomic:lock", f"owner-{i}", nx=True) for i, c in enumerate(clients))
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    results = asyncio.run(race())
    winners = [i for i, ok in enumerate(results) if ok]
    assert len(winners) == 1
    assert endpoints[0].client().get("atomic:lock") == f"owner-{winners[0]}".encode()


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_pipeline_of_10k_commands_returns_every_reply_in_order(
    where: str, limedb_single, limedb_three
) -> None:
    endpoint = limedb_single if where == "single" else limedb_three[1][1]
    client = endpoint.client()
    pipe = client.pipeline(transaction=False)
    for i in range(2500):
        key = f"pipe:{where}:{i % 50}"
        pipe.set(key, i)
        pipe.get(key)
        pipe.incr(f"pipe:{where}:counter")
        pipe.echo(f"m{i}")
    replies = pipe.execute()
    assert len(replies) == 10_000
    for i in range(2500):
        assert replies[4 * i : 4 * i + 4] == [True, str(i).encode(), i + 1, f"m{i}".encode()]
    client.close()


@pytest.fixture(scope="module")
def limedb_sync(tmp_path_factory: pytest.TempPathFactory):
    """One node with the default durability (fsync before acknowledging): every SET waits."""
    env = {"LIMEDB_DURABILITY": "sync"}
    with limedb_cluster(tmp_path_factory.mktemp("limedb-sync"), 1, 95, env) as (_, endpoints):
        yield endpoints[0]


@pytest.mark.parametrize("where", ["sync-node", "cluster"])
def test_pipelined_writes_started_together_keep_pipeline_order(
    where: str, limedb_sync, limedb_three
) -> None:
    """Independent commands of a pipeline start together (docs/redis.md, Pipelining): plain
    SETs of one key still end with the last value, other clients and later commands see the
    pipeline's writes in order, and every reply comes back in place."""
    endpoint = limedb_sync if where == "sync-node" else limedb_three[1][2]
    client, reader = endpoint.client(), endpoint.client()
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(400):
            pipe.set(f"batch:{where}:{i % 7}", i)  # the same 7 keys over and over
            pipe.set(f"batch:{where}:distinct:{i}", i)
        pipe.get(f"batch:{where}:3")  # after SETs of that key: sees the last one
        pipe.incr(f"batch:{where}:counter")
        pipe.incr(f"batch:{where}:counter")
        pipe.set(f"batch:{where}:nx", "first", nx=True)
        pipe.set(f"batch:{where}:nx", "second", nx=True)
        replies = pipe.execute()
        assert replies[:800] == [True] * 800
        last_of_3 = max(i for i in range(400) if i % 7 == 3)
        assert replies[800:] == [str(last_of_3).encode(), 1, 2, True, None]
        for k in range(7):
            last = max(i for i in range(400) if i % 7 == k)
            assert reader.get(f"batch:{where}:{k}") == str(last).encode()
        assert reader.mget([f"batch:{where}:distinct:{i}" for i in range(400)]) == [
            str(i).encode() for i in range(400)
        ]
    finally:
        client.close()
        reader.close()
