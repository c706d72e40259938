"""The atomic operations' decisions and their RPC wire format, without a server."""

from __future__ import annotations

import asyncio

import pytest
from limedb.cluster import rpc
from limedb.cluster.atomic import (
    Action,
    ClusterAtomic,
    KeyLocks,
    OperationRefused,
    decode_request,
    encode_request,
)
from limedb.cluster.service import Consistency, ReadResult
from limedb.cluster.transaction import decode_batch, decode_results, encode_batch, encode_results
from limedb.resp.encoding import OK, Status
from limedb.resp.server import error_reply
from limedb.resp.string_ops import CommandError, StringOp, parse_int64
from support.wait import wait_for_async

NOW = 1_700_000_000_000
ABSENT = ReadResult(None, "n")


def value(v: bytes, expires: int | None = None) -> ReadResult:
    return ReadResult(v, "n", 1, expires)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b"0", 0),
        (b"-5", -5),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
    ],
)
def test_redis_integer_syntax_accepts_canonical_integers(raw: bytes, parsed: int) -> None:
    assert parse_int64(raw) == parsed


@pytest.mark.parametrize(
    "raw", [b"", b"+1", b"01", b"-0", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"\xd9\xa3"]
)
def test_redis_integer_syntax_rejects_what_redis_rejects(raw: bytes) -> None:
    assert parse_int64(raw) is None


def test_incr_keeps_the_time_to_live_and_refuses_overflow() -> None:
    outcome = StringOp("incrby", (b"5",))(value(b"10", NOW + 5000), NOW)
    assert (outcome.action, outcome.reply, outcome.value) == (Action.SET, 15, b"15")
    assert outcome.expires_at_ms == NOW + 5000
    with pytest.raises(CommandError, match="overflow"):
        StringOp("incrby", (b"1",))(value(b"9223372036854775807"), NOW)
    with pytest.raises(CommandError, match="not an integer"):
        StringOp("incrby", (b"1",))(value(b"abc"), NOW)


def test_set_conditions_and_get_reply() -> None:
    nx = StringOp("set", (b"v", b"nx", b"0", b"none", b"0"))
    assert nx(value(b"old"), NOW).action is Action.KEEP
    assert nx(value(b"old"), NOW).reply is None
    assert nx(ABSENT, NOW).reply == OK
    xx_get = StringOp("set", (b"v", b"xx", b"1", b"keep", b"0"))
    outcome = xx_get(value(b"old", NOW + 10), NOW)
    assert (outcome.reply, outcome.value, outcome.expires_at_ms) == (b"old", b"v", NOW + 10)
    assert xx_get(ABSENT, NOW).action is Action.KEEP


def test_expire_conditions_follow_redis_infinite_ttl_rule() -> None:
    def expire(condition: bytes, current: ReadResult, ms: int = 1000) -> int:
        return StringOp("expire", (b"rel", str(ms).encode(), condition))(current, NOW).reply

    persistent, expiring = value(b"v"), value(b"v", NOW + 500)
    assert expire(b"gt", persistent) == 0
    assert expire(b"lt", persistent) == 1
    assert expire(b"gt", expiring) == 1
    assert expire(b"nx", expiring) == 0
    assert expire(b"xx", persistent) == 0
    assert expire(b"", ABSENT) == 0
    assert StringOp("expire", (b"rel", b"-1", b""))(persistent, NOW).action is Action.DELETE


def test_request_and_reply_survive_the_wire() -> None:
    op = StringOp("set", (b"\x00\xff", b"nx", b"1", b"px", b"100"))
    assert decode_request(encode_request(b"k\r\n", op, Consistency.ALL), StringOp) == (
        b"k\r\n",
        op,
        Consistency.ALL,
    )
    for reply in (None, 0, -(2**63), b"", b"bytes", OK):
        decoded = op.decode_reply(op.encode_reply(reply))
        assert decoded == reply and type(decoded) is type(reply)


class OneCopy:
    """The coordinator's part a primary uses (limedb.cluster.atomic.Writer), over one dict:
    enough to run the real lock, forwarding and wire code of two nodes in one process."""

    timeout_s = 1.0

    def __init__(self, node_id: str, store: dict[bytes, tuple[bytes, int]]) -> None:
        self.node_id = node_id
        self.store = store

    def replicas(self, key: bytes) -> tuple[str, ...]:
        return ("primary", "other")

    def reachable(self, node_id: str) -> bool:
        return True

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult:
        found = self.store.get(key)
        return ABSENT if found is None else ReadResult(found[0], "primary", found[1])

    async def write(self, mutation: tuple, consistency: Consistency | None = None) -> bool:
        key, data, ts, tombstone = mutation[:4]
        if tombstone:
            self.store.pop(key, None)
        else:
            self.store[key] = (data, ts)
        return True

    def stamp_after(self, ts: int) -> int:
        return ts + 1

    def physical_ms(self) -> int:
        return NOW


def test_a_forwarded_operation_answers_as_if_run_where_the_client_asked() -> None:
    store: dict[bytes, tuple[bytes, int]] = {}

    def mutation(key: bytes, data: bytes, ts: int, tombstone: bool, expires=None) -> tuple:
        return (key, data, ts, tombstone, expires)

    async def call(node_id: str, kind: int, payload: bytes, timeout_s: float) -> bytes:
        assert (node_id, kind) == ("primary", rpc.ATOMIC)
        return await primary.handle(payload)

    primary = ClusterAtomic(OneCopy("primary", store), call, mutation, StringOp)
    other = ClusterAtomic(OneCopy("other", store), call, mutation, StringOp)

    async def main() -> None:
        reply = await other.atomic_update(b"k", StringOp("set", (b"41", b"", b"0", b"none", b"0")))
        assert reply == OK and type(reply) is type(OK)
        assert await other.atomic_update(b"k", StringOp("incrby", (b"1",))) == 42
        await other.atomic_update(b"k", StringOp("set", (b"abc", b"", b"0", b"none", b"0")))
        with pytest.raises(OperationRefused) as refused:
            await other.atomic_update(b"k", StringOp("incrby", (b"1",)))
        # The client sees Redis's own line, not one wrapped by the forwarding.
        assert error_reply(refused.value).line == "ERR value is not an integer or out of range"

    asyncio.run(main())
    assert store[b"k"][0] == b"abc"
    assert (other.counters["atomic_forwarded"], primary.counters["atomic_served"]) == (4, 4)


def test_key_locks_serialize_holders_and_forget_idle_keys() -> None:
    locks = KeyLocks()
    counter = {"value": 0}

    async def increment() -> None:
        async with locks.hold(b"k"):
            seen = counter["value"]
            await asyncio.sleep(0)
            counter["value"] = seen + 1

    async def main() -> None:
        await asyncio.gather(*(increment() for _ in range(50)))

    asyncio.run(main())
    assert counter["value"] == 50
    assert len(locks) == 0


def test_blind_writes_share_a_key_but_never_overlap_a_read_modify_write() -> None:
    locks = KeyLocks()
    log: list[str] = []
    release = {name: asyncio.Event() for name in ("set1", "set2", "incr", "set3")}

    async def holder(name: str, exclusive: bool) -> None:
        async with locks.hold(b"k", exclusive):
            log.append(f"+{name}")
            await release[name].wait()
            log.append(f"-{name}")

    async def main() -> None:
        tasks = [asyncio.create_task(holder(n, False)) for n in ("set1", "set2")]
        await wait_for_async(lambda: log == ["+set1", "+set2"], what="both blind writes in")
        tasks.append(asyncio.create_task(holder("incr", True)))
        await asyncio.sleep(0)  # the INCR runs up to its wait for the key
        tasks.append(asyncio.create_task(holder("set3", False)))  # queued behind the INCR
        await asyncio.sleep(0)
        assert log == ["+set1", "+set2"]
        release["set1"].set()
        await wait_for_async(lambda: "-set1" in log, what="set1 out")
        assert "+incr" not in log  # set2 still holds the key
        release["set2"].set()
        await wait_for_async(lambda: "+incr" in log, what="the INCR in")
        assert "+set3" not in log  # a blind write never overlaps the INCR
        release["incr"].set()
        await wait_for_async(lambda: "+set3" in log, what="set3 in after the INCR")
        release["set3"].set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert log.index("+incr") > max(log.index("-set1"), log.index("-set2"))
    assert log.index("+set3") > log.index("-incr")
    assert len(locks) == 0


def test_a_cancelled_waiter_does_not_keep_the_key_locked() -> None:
    locks = KeyLocks()

    async def main() -> None:
        await locks.acquire(b"k")
        waiter = asyncio.create_task(locks.acquire(b"k"))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        locks.release(b"k")
        await asyncio.wait_for(locks.acquire(b"k"), 1)
        locks.release(b"k")

    asyncio.run(main())
    assert len(locks) == 0


def test_expire_xx_combined_with_gt_needs_both() -> None:
    expiring = value(b"v", NOW + 200_000)
    shorter = StringOp("expire", (b"rel", b"101000", b"gt,xx"))
    longer = StringOp("expire", (b"rel", b"300000", b"gt,xx"))
    assert shorter(expiring, NOW).reply == 0
    assert longer(expiring, NOW).reply == 1
    assert longer(value(b"v"), NOW).reply == 0


def test_a_transaction_and_its_results_survive_the_wire() -> None:
    steps = [
        (b"k1", StringOp("incrby", (b"2",))),
        (b"\x00k2", StringOp("set", (b"v", b"nx", b"1", b"px", b"100"))),
        (b"k1", StringOp("type")),
    ]
    watches = [(b"k1", 7), (b"", 0)]
    assert decode_batch(encode_batch(steps, watches, 3), StringOp) == (steps, watches, 3)
    results = [42, OperationRefused("ERR value is not an integer or out of range"), Status("none")]
    decoded = decode_results(encode_results(results, steps), steps)
    assert decoded is not None
    assert decoded[0] == 42 and decoded[2] == "none" and type(decoded[2]) is Status
    assert isinstance(decoded[1], OperationRefused) and str(decoded[1]) == str(results[1])
    assert decode_results(encode_results(None, steps), steps) is None
