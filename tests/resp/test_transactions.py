"""Redis transactions through redis-py (docs/redis.md, "Transactions"): the default
`r.pipeline()` (MULTI/EXEC) on keys of one primary is atomic under concurrent INCRs from other
clients on every node; keys of different primaries get CROSSSLOT and nothing is applied; WATCH
aborts EXEC on a concurrent change; TYPE, and KEYS across the whole cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import redis
from redis.exceptions import ClusterCrossSlotError
from respservers import RespEndpoint, limedb_cluster

pytestmark = pytest.mark.redis

TRANSACTIONS = 60
INCRS_PER_TRANSACTION = 3
BACKGROUND_CLIENTS = 6


class Raw:
    """One connection, replies unparsed by command (redis-py maps QUEUED of a SET to False)."""

    def __init__(self, endpoint: RespEndpoint) -> None:
        self.connection = redis.Connection(host=endpoint.host, port=endpoint.port)

    def __call__(self, *args: str):
        self.connection.send_command(*args)
        try:
            return self.connection.read_response()
        except redis.ResponseError as exc:
            return exc

    def close(self) -> None:
        self.connection.disconnect()


def primary_of(http_url: str, key: str) -> str:
    report = httpx.get(f"{http_url}/api/v1/replicas/{quote(key, safe='')}", timeout=10).json()
    return next(r["node_url"] for r in report["replicas"] if r["is_primary"])


def keys_by_primary(http_url: str, prefix: str, count: int = 40) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for i in range(count):
        key = f"{prefix}:{i}"
        grouped.setdefault(primary_of(http_url, key), []).append(key)
    return grouped


def hammer(
    endpoints: list[RespEndpoint], key: str, stop: threading.Event
) -> tuple[list[int], list[threading.Thread]]:
    """Plain INCRs of `key` from other clients on every node until `stop`: how many each
    client made, and the threads."""
    counts = [0] * BACKGROUND_CLIENTS

    def run(i: int) -> None:
        client = endpoints[i % len(endpoints)].client()
        try:
            while not stop.is_set():
                client.incr(key)
                counts[i] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(BACKGROUND_CLIENTS)]
    for thread in threads:
        thread.start()
    return counts, threads


def atomic_under_concurrent_incrs(endpoints: list[RespEndpoint], keys: list[str]) -> None:
    stop = threading.Event()
    counts, threads = hammer(endpoints, keys[0], stop)
    client = endpoints[-1].client()
    try:
        for _ in range(TRANSACTIONS):
            pipe = client.pipeline()  # transaction=True: MULTI ... EXEC
            for _ in range(INCRS_PER_TRANSACTION):
                pipe.incr(keys[0])
            for other in keys[1:]:
                pipe.incr(other)
            pipe.get(keys[0])
            replies = pipe.execute()
            first = replies[0]
            # No other client's INCR ran between this transaction's: consecutive values, and
            # its GET sees exactly its own last increment.
            assert replies[:INCRS_PER_TRANSACTION] == list(range(first, first + 3)), replies
            assert int(replies[-1]) == first + INCRS_PER_TRANSACTION - 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    total = sum(counts) + TRANSACTIONS * INCRS_PER_TRANSACTION
    assert sum(counts) > 0
    assert int(client.get(keys[0])) == total
    for other in keys[1:]:
        assert int(client.get(other)) == TRANSACTIONS
    client.close()


def test_default_pipeline_is_atomic_on_a_single_node(limedb_single) -> None:
    atomic_under_concurrent_incrs([limedb_single], ["tx1:counter", "tx1:other"])


def test_default_pipeline_on_keys_of_one_primary_is_atomic_in_a_cluster(limedb_three) -> None:
    cluster, endpoints = limedb_three
    grouped = keys_by_primary(cluster.nodes[0].url, "tx3")
    keys = max(grouped.values(), key=len)[:2]
    assert len(keys) == 2
    atomic_under_concurrent_incrs(endpoints, keys)


def test_keys_of_different_primaries_get_crossslot_and_nothing_is_applied(limedb_three) -> None:
    cluster, endpoints = limedb_three
    grouped = keys_by_primary(cluster.nodes[0].url, "cross")
    assert len(grouped) >= 2
    a, b = (keys[0] for keys in list(grouped.values())[:2])
    client = endpoints[0].client()
    try:
        pipe = client.pipeline()
        pipe.set(a, "1")
        pipe.set(b, "2")
        # `-CROSSSLOT ...`, which redis-py raises as its cluster cross-slot error.
        with pytest.raises(ClusterCrossSlotError, match="same primary replica"):
            pipe.execute()
        assert client.get(a) is None and client.get(b) is None
        # The connection is usable afterwards, and non-transactional pipelines still work.
        assert client.pipeline(transaction=False).set(a, "x").set(b, "y").execute() == [True] * 2
    finally:
        client.close()


@pytest.mark.parametrize("topology", ["single", "three"])
def test_watch_aborts_exec_on_a_concurrent_change(topology, limedb_single, limedb_three) -> None:
    endpoints = [limedb_single] if topology == "single" else limedb_three[1]
    key = f"watched:{topology}"
    client, other = endpoints[0].client(), endpoints[-1].client()
    try:
        client.set(key, "10")
        with client.pipeline() as pipe:
            pipe.watch(key)
            balance = int(pipe.get(key))
            other.set(key, "99")  # another client changes it between WATCH and EXEC
            pipe.multi()
            pipe.set(key, str(balance - 1))
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert client.get(key) == b"99"

        # Unchanged: the transaction runs.
        with client.pipeline() as pipe:
            pipe.watch(key)
            balance = int(pipe.get(key))
            pipe.multi()
            pipe.set(key, str(balance - 1))
            assert pipe.execute() == [True]
        assert client.get(key) == b"98"

        # A watched key deleted meanwhile aborts too; UNWATCH forgets it.
        with client.pipeline() as pipe:
            pipe.watch(key)
            other.delete(key)
            pipe.multi()
            pipe.set(key, "1")
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert client.get(key) is None

        # Absent when watched, created and deleted meanwhile: absent again, but changed, so
        # Redis aborts (the deleted key's version moved on, tombstone and all).
        with client.pipeline() as pipe:
            pipe.watch(key)
            other.set(key, "7")
            other.delete(key)
            pipe.multi()
            pipe.set(key, "1")
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert client.get(key) is None
        raw = Raw(endpoints[0])
        try:
            assert raw("WATCH", key) == b"OK"
            other.set(key, "5")
            assert raw("UNWATCH") == b"OK"
            assert raw("MULTI") == b"OK"
            assert raw("INCR", key) == b"QUEUED"
            assert raw("EXEC") == [6]
        finally:
            raw.close()
    finally:
        client.close()
        other.close()


def test_transaction_errors_as_redis_answers_them(limedb_single) -> None:
    client = limedb_single.client()
    try:
        with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
            client.execute_command("EXEC")
        with pytest.raises(redis.ResponseError, match="DISCARD without MULTI"):
            client.execute_command("DISCARD")
        # A runtime error answers in place; the other commands still run (no rollback).
        client.set("tx:text", "abc")
        pipe = client.pipeline()
        pipe.set("tx:a", "1").incr("tx:text").incr("tx:a").ping().type("tx:a").type("tx:none")
        replies = pipe.execute(raise_on_error=False)
        assert replies[0] is True and replies[2] == 2 and replies[3] is True
        assert isinstance(replies[1], redis.ResponseError)
        assert replies[4:] == [b"string", b"none"]
    finally:
        client.close()
    raw = Raw(limedb_single)
    try:
        # An unknown command while queueing discards the whole transaction.
        assert raw("MULTI") == b"OK"
        assert raw("SET", "tx:b", "1") == b"QUEUED"
        assert "unknown command" in str(raw("NOSUCH", "x"))
        assert str(raw("EXEC")).startswith("Transaction discarded because of previous errors")
        assert raw("GET", "tx:b") is None
        assert raw("MULTI") == b"OK"
        assert "MULTI calls can not be nested" in str(raw("MULTI"))
        assert "WATCH inside MULTI is not allowed" in str(raw("WATCH", "tx:b"))
        assert raw("SET", "tx:b", "1") == b"QUEUED"
        assert raw("DISCARD") == b"OK"
        assert raw("GET", "tx:b") is None
    finally:
        raw.close()


@pytest.fixture(scope="module")
def rf1_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RespEndpoint]]:
    """Three nodes with RF=1: each key lives on one node only."""
    env = {"LIMEDB_REPLICATION_FACTOR": "1", "LIMEDB_VNODES": "16"}
    with limedb_cluster(tmp_path_factory.mktemp("rf1"), 3, 90, env) as (_, endpoints):
        yield endpoints


def test_keys_lists_matching_keys_of_the_whole_cluster_and_type_says_string(rf1_cluster):
    written = {f"user:{i}".encode() for i in range(30)}
    writer = rf1_cluster[1].client()
    try:
        for key in written:
            writer.set(key, "v")
        writer.set("other:1", "v")
        writer.delete("user:7")
    finally:
        writer.close()
    expected = sorted(written - {b"user:7"})
    for endpoint in rf1_cluster:
        client = endpoint.client()
        try:
            # Each node holds only its own share, yet KEYS answers for the whole cluster.
            assert client.dbsize() < len(expected)
            assert sorted(client.keys("user:*")) == expected
            assert client.keys("user:1?") == [f"user:{i}".encode() for i in range(10, 20)]
            assert client.type("user:3") == b"string"
            assert client.type("user:7") == b"none"
        finally:
            client.close()


# Each scenario: commands on one connection; every reply (errors as their text) must be the
# same from a real redis-server and from LimeDB. Keys are prefixed per scenario.
SCENARIOS = {
    "queued-and-run": [
        ["MULTI"], ["SET", "k", "1"], ["INCR", "k"], ["INCRBY", "k", "10"], ["GET", "k"],
        ["TYPE", "k"], ["TYPE", "none"], ["EXISTS", "k", "none"], ["STRLEN", "k"],
        ["APPEND", "k", "x"], ["GETSET", "k", "v"], ["SETNX", "k", "w"], ["MGET", "k", "none"],
        ["DEL", "k", "none"], ["PING"], ["ECHO", "hi"], ["EXEC"],
    ],
    "runtime-errors-do-not-roll-back": [
        ["SET", "t", "text"], ["MULTI"], ["INCR", "t"], ["SET", "u", "1"],
        ["SET", "u", "2", "BADOPT"], ["EXPIRE", "u", "x"], ["GET", "u"], ["EXEC"], ["GET", "u"],
    ],
    "queue-errors-abort": [
        ["MULTI"], ["SET", "a", "1"], ["GET"], ["NOSUCH"], ["EXEC"], ["GET", "a"],
    ],
    "misuse": [
        ["EXEC"], ["DISCARD"], ["MULTI"], ["MULTI"], ["WATCH", "a"], ["SET", "a", "1"],
        ["DISCARD"], ["GET", "a"], ["UNWATCH"], ["WATCH"],
    ],
    "watch-untouched": [
        ["SET", "w", "1"], ["WATCH", "w", "other"], ["GET", "w"], ["MULTI"], ["INCR", "w"],
        ["EXEC"], ["MULTI"], ["EXEC"],
    ],
    "expiry-in-transaction": [
        ["MULTI"], ["SET", "e", "1", "EX", "100"], ["TTL", "e"], ["PERSIST", "e"], ["TTL", "e"],
        ["PEXPIRE", "e", "100000", "NX"], ["SETEX", "f", "50", "v"], ["GETDEL", "f"],
        ["MSET", "g", "1", "h", "2"], ["EXEC"],
    ],
}  # fmt: skip


def _prefixed(command: list[str], prefix: str) -> list[str]:
    """Prefix the key arguments (every argument that names a key in these scenarios)."""
    name = command[0].upper()
    keyed = {"SET", "INCR", "INCRBY", "GET", "TYPE", "STRLEN", "APPEND", "GETSET", "SETNX",
             "EXPIRE", "PERSIST", "TTL", "PEXPIRE", "SETEX", "GETDEL"}  # fmt: skip
    if name in keyed and len(command) > 1:
        return [command[0], prefix + command[1], *command[2:]]
    if name in ("EXISTS", "MGET", "DEL", "WATCH"):
        return [command[0], *(prefix + k for k in command[1:])]
    if name == "MSET":
        return [command[0], *(prefix + a if i % 2 == 0 else a for i, a in enumerate(command[1:]))]
    return command


def _plain(reply):
    """Errors as their text, also inside EXEC's array, so replies compare by value."""
    if isinstance(reply, Exception):
        return f"{type(reply).__name__}: {reply}"
    if isinstance(reply, list):
        return [_plain(item) for item in reply]
    return reply


def _replies(endpoint: RespEndpoint, prefix: str, commands: list[list[str]]) -> list:
    raw = Raw(endpoint)
    try:
        replies = []
        for command in commands:
            replies.append(_plain(raw(*_prefixed(command, prefix))))
        return replies
    finally:
        raw.close()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transactions_answer_as_redis_does(name, redis_reference, limedb_single) -> None:
    prefix = f"txdiff:{name}:"
    expected = _replies(redis_reference, prefix, SCENARIOS[name])
    assert _replies(limedb_single, prefix, SCENARIOS[name]) == expected
