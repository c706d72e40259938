"""What docs/redis.md promises when a key's primary replica dies (kill -9).

Plain SETs of its keys keep working at once (the receiving node coordinates them itself when
the primary does not answer). Read-modify-writes answer UNAVAILABLE until the failure detector
declares the primary dead; once the survivors agree, the next replica serializes them, its
quorum read sees every increment the old primary acknowledged, and concurrent increments
through both survivors again count exactly.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from limedb.cluster.ring.placement import Ring
from respservers import limedb_cluster, wait_until

pytestmark = pytest.mark.redis


def key_with_primary(urls: list[str], primary: str, prefix: str) -> str:
    ring = Ring({url: url for url in urls})
    for i in range(10_000):
        key = f"{prefix}{i}"
        if ring.replicas(key.encode(), 3)[0] == primary:
            return key
    raise AssertionError(f"no key of {primary}")


def test_increments_survive_the_death_of_the_primary(tmp_path) -> None:
    with limedb_cluster(tmp_path, 3, 110) as (cluster, endpoints):
        victim = cluster.nodes[2]
        counter = key_with_primary(cluster.urls, victim.url, "failover:counter:")
        plain = key_with_primary(cluster.urls, victim.url, "failover:plain:")
        first = endpoints[0].client()
        for expected in range(1, 11):
            assert first.incr(counter) == expected

        victim.kill()

        assert first.set(plain, "still writable") is True
        assert endpoints[1].client().get(plain) == b"still writable"

        # Until the failure detector declares it dead, the primary is still the primary.
        with pytest.raises(redis.ResponseError, match="^UNAVAILABLE primary replica"):
            first.incr(counter)
        survivors = cluster.nodes[:2]
        wait_until(
            lambda: all(n.peer_status(cluster.client, victim) == "dead" for n in survivors),
            60,
            "both survivors to declare the killed primary dead",
        )
        value = first.incr(counter)
        assert value == 11  # nothing the old primary acknowledged was lost

        async def concurrent_increments() -> list[int]:
            clients = [aioredis.Redis(host=e.host, port=e.port) for e in endpoints[:2] * 10]
            try:
                return await asyncio.gather(*(c.incr(counter) for c in clients))
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))

        replies = asyncio.run(concurrent_increments())
        assert sorted(replies) == list(range(12, 32))
        assert int(endpoints[1].client().get(counter)) == 31
