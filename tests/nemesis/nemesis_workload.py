"""The nemesis campaign's client load: reads, writes, deletes, TTL writes and batches, over
HTTP (single-key routes and /v1/batch) and RESP, every operation recorded in the History.

It extends the cluster tests' `Workload` (whose HTTP write, delete and read recording it
reuses) with the other protocols and operations. Keys `k...` are shared by every operation
kind, so HTTP and RESP writes race on the same keys; keys `t...` are written once each, with
a TTL, and judged by `nemesis_checks.ttl_problems`. Every value is unique to its write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.cluster import Workload
from support.history import FAIL, OK, READ, UNKNOWN, WRITE, History

RESP_PORT = 6379
TTLS_S = (4.0, 8.0, 15.0)


@dataclass(frozen=True)
class TtlWrite:
    key: str
    ttl_s: float


class NemesisWorkload(Workload):
    """Threads drawing operations at random (from `seed`) against the current targets."""

    def __init__(
        self,
        history: History,
        targets: list[str],
        *,
        seed: int,
        resp_password: str,
        keys: int = 120,
        threads: int = 4,
        timeout_s: float = 4.0,
    ) -> None:
        super().__init__(history, targets, keys=keys, threads=threads, timeout_s=timeout_s)
        self.seed = seed
        self.resp_password = resp_password
        self.ttl_writes: list[TtlWrite] = []

    def set_targets(self, targets: list[str]) -> None:
        # A new list, not a mutation: workers pick from whichever list they last saw.
        self.targets = list(targets)

    def _run(self, worker: int) -> None:
        rng = random.Random(f"{self.seed}-{worker}")
        seq = 0
        resp: dict[str, redis.Redis] = {}
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                seq += 1
                url = rng.choice(self.targets)
                key = rng.choice(self.keys)
                value = f"w{worker}-{seq}".encode()
                roll = rng.random()
                if roll < 0.22:
                    self._read(client, url, f"{url}/v1/kv/{key}", key)
                elif roll < 0.40:
                    self._mutate(client, url, f"{url}/v1/kv/{key}", key, value)
                elif roll < 0.46:
                    self._mutate(client, url, f"{url}/v1/kv/{key}", key, None)
                elif roll < 0.58:
                    self._resp_read(self._resp(resp, url), url, key)
                elif roll < 0.70:
                    self._resp_write(self._resp(resp, url), url, key, value)
                elif roll < 0.74:
                    self._resp_delete(self._resp(resp, url), url, key)
                elif roll < 0.84:
                    keys = rng.sample(self.keys, 3)
                    self._batch(client, url, keys[:2], keys, f"w{worker}-{seq}")
                elif roll < 0.92:
                    self._ttl_write(client, resp, rng, url, f"t{worker}-{seq}", value)
                elif self.ttl_writes:
                    ttl_key = rng.choice(self.ttl_writes[-20:]).key
                    self._read(client, url, f"{url}/v1/kv/{ttl_key}", ttl_key)
        for connection in resp.values():
            connection.close()

    # ------------------------------------------------------------------ RESP

    def _resp(self, clients: dict[str, redis.Redis], url: str) -> redis.Redis:
        if url not in clients:
            clients[url] = redis.Redis(
                host=httpx.URL(url).host,
                port=RESP_PORT,
                password=self.resp_password,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                # A retried SET would hide the outcome of the first attempt from the history.
                retry=Retry(NoBackoff(), 0),
            )
        return clients[url]

    def _resp_mutation(self, op, call) -> None:
        try:
            call()
        except redis.TimeoutError:
            self.history.finish(op, UNKNOWN, timed_out=True)
        except redis.RedisError:
            # UNAVAILABLE and dropped connections may follow a write that reached a replica.
            self.history.finish(op, UNKNOWN)
        else:
            self.history.finish(op, OK)

    def _resp_write(self, conn: redis.Redis, url: str, key: str, value: bytes) -> None:
        op = self.history.begin(WRITE, key, value, url)
        self._resp_mutation(op, lambda: conn.set(key, value))

    def _resp_delete(self, conn: redis.Redis, url: str, key: str) -> None:
        op = self.history.begin("delete", key, None, url)
        self._resp_mutation(op, lambda: conn.delete(key))

    def _resp_read(self, conn: redis.Redis, url: str, key: str) -> None:
        op = self.history.begin(READ, key, None, url)
        try:
            value = conn.get(key)
        except redis.RedisError:
            self.history.finish(op, FAIL)
        else:
            self.history.finish(op, OK, value)

    # ------------------------------------------------------------------ HTTP extras

    def _batch(
        self, client: httpx.Client, url: str, puts: list[str], gets: list[str], tag: str
    ) -> None:
        """One /v1/batch: puts (not atomic: each its own write) then gets."""
        values = {key: f"{tag}-{i}".encode() for i, key in enumerate(puts)}
        writes = [self.history.begin(WRITE, k, v, url) for k, v in values.items()]
        reads = [self.history.begin(READ, k, None, url) for k in gets]
        body = {"put": [{"key": k, "value": v.decode()} for k, v in values.items()], "get": gets}
        try:
            response = client.post(f"{url}/v1/batch", json=body)
        except httpx.TimeoutException:
            outcome, read, timed_out = UNKNOWN, None, True
        except httpx.HTTPError:
            outcome, read, timed_out = UNKNOWN, None, False
        else:
            timed_out = False
            ok = response.status_code == 200
            outcome = OK if ok else UNKNOWN if response.status_code >= 500 else FAIL
            read = response.json()["values"] if ok else None
        for op in writes:
            self.history.finish(op, outcome, timed_out=timed_out)
        for op in reads:
            if read is None:
                self.history.finish(op, FAIL)
            else:
                seen = read[op.key]
                self.history.finish(op, OK, None if seen is None else seen.encode())

    def _ttl_write(
        self,
        client: httpx.Client,
        resp: dict[str, redis.Redis],
        rng: random.Random,
        url: str,
        key: str,
        value: bytes,
    ) -> None:
        ttl_s = rng.choice(TTLS_S)
        self.ttl_writes.append(TtlWrite(key, ttl_s))
        if rng.random() < 0.5:
            conn = self._resp(resp, url)
            op = self.history.begin(WRITE, key, value, url)
            self._resp_mutation(op, lambda: conn.set(key, value, px=int(ttl_s * 1000)))
            return
        self._mutate(client, url, f"{url}/v1/kv/{key}", key, value, params={"ttl": ttl_s})
