"""A ring record that cannot be persisted (the disk is full) is not adopted, and pulling it
does not fail the caller: a node restarted onto a full disk must come up (read-only), not die
in its start-up pull of its peers' records. Found by the nemesis (seed 7)."""

from __future__ import annotations

import asyncio
import errno

import orjson
from limedb.cluster.ring.exchange import RecordExchange
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.ring.store import RingStore


class FullDiskStore(RingStore):
    def save(self, state: RingRecord) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_record_that_cannot_be_persisted_is_not_adopted_and_the_pull_goes_on(tmp_path):
    old = RingRecord(Ring(["http://a", "http://b"], vnodes=4), 2)
    newer = RingRecord(Ring(["http://a", "http://b", "http://c"], vnodes=4, epoch=2), 2)
    assert newer.newer_than(old)
    keeper = RingKeeper(membership=None, store=FullDiskStore(tmp_path), state=old)

    async def call(node_id: str, kind: int, body: bytes, timeout_s: float) -> bytes:
        return orjson.dumps(newer.to_record())

    exchange = RecordExchange("http://a", keeper, membership=None, call=call)
    asyncio.run(exchange.pull_from(["http://b", "http://c"]))
    assert keeper.state is old
