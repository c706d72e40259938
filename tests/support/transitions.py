"""A growing and shrinking real-process cluster for the transition tests.

`Fleet` starts `limedb serve` nodes on 127.0.0.x (a new node joins with `--await-join` and the
current members as seeds), drives ring changes through the admin client, waits for each
transition to end, and checks what the transitions promise: every acknowledged write readable,
deleted keys deleted, and each live key stored on exactly its RF owners (every node lists its
local keys); keys are read back in batches so the check stays quick at 100,000 keys. Every
process is stopped at teardown.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from limedb.client import Client, LimeDBError
from limedb.cluster.ring.placement import Ring

from support.cluster import SECRET, Node, free_port_pair, wait_for
from support.history import OK, WRITE, History

TRANSITION_TIMEOUT_S = 120.0
BATCH = 1000  # keys per batch request: the node's default max_batch_items
READERS = 4  # batch requests in flight while a check reads every key back


class Fleet:
    """Nodes of one cluster, created on demand; `members` are the ones meant to be in the ring."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        first_host: int = 120,
        admin: tuple[str, str] | None = None,
    ) -> None:
        self.root = root
        # The admin user the admin calls run as (once users exist the secret opens no admin
        # route); None: the cluster secret, as before users existed.
        self.admin_user = admin
        self.env = env
        self.next_host = first_host
        self.nodes: list[Node] = []
        self.members: list[Node] = []
        # The secret its nodes share (the support default unless `env` names another one).
        self.secret = env.get("LIMEDB_CLUSTER_SECRET", SECRET)
        self.http = httpx.Client(timeout=10.0, headers={"x-cluster-secret": self.secret})

    # ------------------------------------------------------------------ processes

    def _make(self, seeds: list[str] | None, extra_env: dict[str, str]) -> Node:
        host = f"127.0.0.{self.next_host}"
        self.next_host += 1
        port, internal = free_port_pair(host)
        node = Node(len(self.nodes), host, port, internal, self.root / f"node-{len(self.nodes)}")
        node.env = {**self.env, **extra_env}
        node.seeds = list(seeds or [])
        self.nodes.append(node)
        return node

    def bootstrap(self, count: int) -> list[Node]:
        nodes = [self._make(None, {}) for _ in range(count)]
        for node in nodes:
            node.seeds = [n.url for n in nodes]
            node.start()
        for node in nodes:
            self.wait_ready(node)
        self.members = list(nodes)
        return nodes

    def start_joiner(self, env: dict[str, str] | None = None) -> Node:
        """A fresh node outside the ring, seeded with the current members."""
        extra = {"LIMEDB_AWAIT_JOIN": "true", **(env or {})}
        node = self._make([m.url for m in self.members if m.running()], extra)
        node.start()
        self.wait_ready(node)
        return node

    def wait_ready(self, node: Node, timeout_s: float = 30.0) -> None:
        wait_for(
            lambda: self.http.get(f"{node.url}/readyz", timeout=1.0).status_code == 200,
            timeout_s,
            f"{node.url} ready\n{node.log_tail()}",
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.http.close()

    # ------------------------------------------------------------------ admin

    def admin(self, node: Node | None = None) -> Client:
        url = (node or self.members[0]).url
        if self.admin_user is not None:
            user, password = self.admin_user
            return Client(url, timeout=20.0, retries=2, user=user, password=password)
        return Client(url, timeout=20.0, retries=2, cluster_secret=self.secret)

    def status(self, node: Node | None = None) -> dict:
        with self.admin(node) as client:
            return client.admin_status()

    def wait_transition(
        self, tid: str, via: Node | None = None, timeout_s: float | None = None
    ) -> dict:
        """Wait until transition `tid` ended (done or rolled back) as `via` sees it."""

        def ended() -> dict | None:
            status = self.status(via)
            last = status.get("last_transition") or {}
            if last.get("id") == tid and last["phase"] in ("done", "rolled_back"):
                return last
            return None

        return wait_for(ended, timeout_s or TRANSITION_TIMEOUT_S, f"transition {tid} to end", 0.2)

    def run(self, start, via: Node | None = None) -> dict:
        """Start a transition with `start(client)` and wait for it to finish; returns it."""
        with self.admin(via) as client:
            tid = start(client)["transition"]["id"]
        last = self.wait_transition(tid, via)
        assert last["phase"] == "done", f"transition {tid} ended {last['phase']}: {last['reason']}"
        return last

    def join(self, node: Node) -> dict:
        last = self.run(lambda c: c.join(node.url))
        self.members.append(node)
        return last

    def leave(self, node: Node, via: Node | None = None) -> dict:
        last = self.run(lambda c: c.leave(node.url), via)
        self.members.remove(node)
        return last

    def set_rf(self, rf: int) -> dict:
        return self.run(lambda c: c.set_replication_factor(rf))

    # ------------------------------------------------------------------ checks

    def wait_converged(self, timeout_s: float = 30.0) -> None:
        """Every member holds the same record (epoch, RF, no transition running)."""

        def same() -> bool:
            seen = set()
            for node in self.members:
                status = self.status(node)
                if status["transition"] is not None:
                    return False
                seen.add((status["epoch"], status["replication_factor"]))
            return len(seen) == 1

        wait_for(same, timeout_s, "every member to hold the same ring record", 0.2)

    def local_keys(self, node: Node) -> set[str]:
        """The keys `node` itself holds (GET /admin/keys, cursor-paged)."""
        keys: set[str] = set()
        after = None
        while True:
            params = {"limit": 5000} if after is None else {"limit": 5000, "after": after}
            body = self.http.get(f"{node.url}/admin/keys", params=params).json()
            keys.update(body["keys"])
            after = body["next"]
            if after is None:
                return keys

    def ring(self) -> tuple[Ring, int]:
        """The committed ring and RF as the first member sees them."""
        status = self.status()
        ring = Ring(
            {m["node_id"]: m["url"] for m in status["members"] if m["state"] != "Left"},
            status["vnodes"],
            status["epoch"],
        )
        return ring, status["replication_factor"]

    def owned_by(self, node: Node, keys: list[str]) -> int:
        """How many of `keys` the committed ring places on `node`."""
        ring, rf = self.ring()
        return sum(1 for key in keys if node.url in ring.replica_urls(key, rf))

    def placement_problems(self, live_keys: set[str], all_keys: set[str]) -> list[str]:
        """Keys not stored on exactly their owners (a live key) or stored anywhere (a
        deleted one), from every member's own listing."""
        ring, rf = self.ring()
        with ThreadPoolExecutor(max_workers=len(self.members)) as pool:
            listings = pool.map(self.local_keys, self.members)
            listed = {node.url: keys for node, keys in zip(self.members, listings, strict=True)}
        problems = []
        for key in sorted(all_keys):
            owners = set(ring.replica_urls(key, rf))
            holders = {url for url, keys in listed.items() if key in keys}
            expected = owners if key in live_keys else set()
            if holders != expected:
                problems.append(f"{key!r} on {sorted(holders)}, expected {sorted(expected)}")
        return problems

    def read_all(self, keys: list[str]) -> dict[str, bytes | None]:
        """Every key's value (None = absent), `BATCH` keys per request at the node's read
        level (as a plain GET). Batches go to the members side by side, one reader per member,
        each starting at its own member; a batch a member cannot serve goes to the next one."""
        chunks = [keys[first : first + BATCH] for first in range(0, len(keys), BATCH)]
        readers = max(1, min(len(self.members), READERS))
        urls = [node.url for node in self.members]

        def read(reader: int) -> dict[str, bytes | None]:
            order = urls[reader % len(urls) :] + urls[: reader % len(urls)]
            clients = [Client(url, timeout=60.0, retries=2) for url in order]
            values: dict[str, bytes | None] = {}
            try:
                for chunk in chunks[reader::readers]:
                    for client in clients:
                        try:
                            values.update(client.batch(get=chunk))
                            break
                        except (httpx.HTTPError, LimeDBError):
                            continue
                    else:
                        raise AssertionError(
                            f"no member could read {len(chunk)} keys from {chunk[0]!r}"
                        )
            finally:
                for client in clients:
                    client.close()
            return values

        values: dict[str, bytes | None] = {}
        with ThreadPoolExecutor(max_workers=readers) as pool:
            for part in pool.map(read, range(readers)):
                values.update(part)
        return values

    def check(self, history: History, timeout_s: float = 60.0) -> None:
        """The acceptance after a step: no acknowledged write lost, deletes stay deleted,
        every live key on exactly its RF owners. Retries until hints and repairs settled."""
        deadline = time.monotonic() + timeout_s
        while True:
            values = self.read_all(sorted(history.keys()))
            problems = history.check_final(values.__getitem__)
            live = {k for k, v in values.items() if v is not None}
            if not problems:
                problems = self.placement_problems(live, set(values))
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert not problems, f"{len(problems)} problems, first: {problems[:5]}"


def preload(fleet: Fleet, history: History, count: int, value_bytes: int = 100) -> list[str]:
    """Write `count` keys in batches through the first member, each recorded as acknowledged;
    returns the keys."""
    pad = b"x" * max(value_bytes - 12, 0)
    keys = [f"p{i:06d}" for i in range(count)]
    with Client(fleet.members[0].url, timeout=60.0, retries=2) as client:
        for first in range(0, count, BATCH):
            batch = {
                key: b"%06d-" % i + pad for i, key in enumerate(keys[first : first + BATCH], first)
            }
            ops = [history.begin(WRITE, key, value) for key, value in batch.items()]
            client.batch(put=batch)
            for op in ops:
                history.finish(op, OK)
    return keys
