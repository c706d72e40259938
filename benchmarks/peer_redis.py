"""Redis Cluster as a benchmark peer: 3 masters + 3 replicas of Debian's redis-server on loopback
ports, and a small RESP load generator of its own driving peer_load's closed loop.

The load generator (asyncio + hiredis's reply parser) computes each key's slot with redis-py's
CRC16 and sends the command straight to the master that owns it, one connection per worker and
master, so every request is a single round trip as a cluster-aware client makes it. With
`wait_replicas` set, a write is `SET` followed by `WAIT 1 1000` on the same connection, and it
counts as acknowledged only when the master reports one replica has it (otherwise an error).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import deque
from pathlib import Path

import hiredis
from peer_configs import redis_conf
from peer_load import VALUE, Tally, key_chooser, stop_all
from redis.crc import key_slot

WAIT_TIMEOUT_MS = 1000


def version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "unknown")


def command(*parts: bytes) -> bytes:
    """One RESP request."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RespConnection(asyncio.Protocol):
    """Requests in order on one connection; replies resolve the waiting futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("redis connection lost"))

    def send(self, payload: bytes, replies: int = 1) -> asyncio.Future:
        """Write `payload` (holding `replies` requests); the future gets the last reply."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.waiters.extend(futures)
        self.transport.write(payload)  # type: ignore[union-attr]
        return futures[-1]


async def connect(port: int) -> RespConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(RespConnection, "127.0.0.1", port)
    return protocol


async def slot_owners(port: int) -> list[int]:
    """The master port of each of the 16384 slots (CLUSTER SLOTS)."""
    conn = await connect(port)
    owners = [0] * 16384
    for start, end, master, *_ in await conn.send(command(b"CLUSTER", b"SLOTS")):
        owners[start : end + 1] = [int(master[1])] * (end - start + 1)
    conn.transport.close()
    return owners


class RedisCluster:
    """3 masters + 3 replicas (`redis-cli --cluster create --cluster-replicas 1`) on ports
    base_port..base_port+5; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, root: Path, base_port: int, appendfsync: str) -> None:
        self.root = root
        self.ports = [base_port + i for i in range(6)]
        self.appendfsync = appendfsync
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> RedisCluster:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        for port in self.ports:
            directory = self.root / f"r{port}"
            directory.mkdir(parents=True)
            conf = directory / "redis.conf"
            conf.write_text(redis_conf(port, str(directory), self.appendfsync))
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(port, ["PING"], "PONG")
        create = subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in self.ports]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-800:]}")
        for port in self.ports:
            self._wait(port, ["CLUSTER", "INFO"], "cluster_state:ok")

    def _wait(self, port: int, args: list[str], expect: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), *args], capture_output=True, text=True
            ).stdout
            if expect in out:
                return
            time.sleep(0.2)
        raise RuntimeError(f"redis on port {port} never answered {expect!r} to {args}")

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs)


class RedisLoad:
    """The load on a RedisCluster: preload, then the 50/50 closed loop."""

    def __init__(self, cluster: RedisCluster, wait_replicas: bool) -> None:
        self.cluster = cluster
        self.wait_replicas = wait_replicas

    def preload(self, keys: int) -> None:
        asyncio.run(self._preload(keys))

    async def _preload(self, keys: int) -> None:
        owners = await slot_owners(self.cluster.ports[0])
        by_master: dict[int, list[bytes]] = {}
        for i in range(keys):
            key = b"k%d" % i
            by_master.setdefault(owners[key_slot(key)], []).append(command(b"SET", key, VALUE))
        for port, requests in by_master.items():
            conn = await connect(port)
            for start in range(0, len(requests), 1000):
                batch = requests[start : start + 1000]
                reply = await conn.send(b"".join(batch), len(batch))
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"preload SET failed on {port}: {reply}")
            conn.transport.close()

    def run(self, in_flight: int, keys: int) -> callable:
        """A `run(deadline, tally)` for peer_load.measure."""

        def drive(deadline: float, tally: Tally) -> None:
            asyncio.run(self._drive(deadline, tally, in_flight, keys))

        return drive

    async def _drive(self, deadline: float, tally: Tally, in_flight: int, keys: int) -> None:
        owners = await slot_owners(self.cluster.ports[0])
        masters = sorted(set(owners))
        workers = []
        for i in range(in_flight):
            conns = {port: await connect(port) for port in masters}
            workers.append(self._worker(deadline, tally, conns, owners, keys, os.getpid() + i))
        await asyncio.gather(*workers)

    async def _worker(
        self,
        deadline: float,
        tally: Tally,
        conns: dict[int, RespConnection],
        owners: list[int],
        keys: int,
        seed: int,
    ) -> None:
        choose = key_chooser(keys, seed)
        wait = command(b"WAIT", b"1", str(WAIT_TIMEOUT_MS).encode()) if self.wait_replicas else b""
        perf, monotonic = time.perf_counter, time.monotonic
        while monotonic() < deadline:
            key, write = choose()
            conn = conns[owners[key_slot(key)]]
            started = perf()
            if write:
                reply = await conn.send(command(b"SET", key, VALUE) + wait, 2 if wait else 1)
                ok = reply == 1 if wait else reply == b"OK"
            else:
                reply = await conn.send(command(b"GET", key))
                ok = not isinstance(reply, hiredis.ReplyError)
            tally.add(perf() - started, ok)
        for conn in conns.values():
            conn.transport.close()
