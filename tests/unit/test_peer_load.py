"""bench_peers.py's load is the 50/50 mix over uniform keys it says it is, and its Redis client
speaks RESP and matches replies to requests in order (no server started)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peer_load import key_chooser  # noqa: E402
from peer_redis import RespConnection, command  # noqa: E402


def test_the_mix_is_half_writes_over_uniform_keys_in_range() -> None:
    choose = key_chooser(100, seed=7)
    draws = [choose() for _ in range(20_000)]
    writes = sum(write for _, write in draws)
    assert 9_400 < writes < 10_600
    keys = Counter(key for key, _ in draws)
    assert set(keys) == {b"k%d" % i for i in range(100)}
    assert max(keys.values()) < 2 * min(keys.values())


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert command(b"SET", b"k1", b"vv") == b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$2\r\nvv\r\n"
    assert command(b"WAIT", b"1", b"1000") == b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$4\r\n1000\r\n"


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_replies_resolve_requests_in_order_and_a_pipelined_pair_waits_for_its_last() -> None:
    async def scenario() -> None:
        conn = RespConnection()
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        get = conn.send(command(b"GET", b"k1"))
        set_and_wait = conn.send(command(b"SET", b"k2", b"v") + command(b"WAIT", b"1", b"5"), 2)
        conn.data_received(b"$2\r\nv1\r\n+OK\r")  # the SET's reply split across reads
        assert get.result() == b"v1"
        assert not set_and_wait.done()
        conn.data_received(b"\n:1\r\n")
        assert set_and_wait.result() == 1

    asyncio.run(scenario())
