"""Real-process clusters for tests: `limedb serve` nodes on their own loopback addresses.

Node i listens on 127.0.0.<i+2> (public port and internal port both free there), gets the full
static member list as seeds, and is driven through its process handle: kill -9, SIGSTOP,
SIGCONT, restart on the same data directory. Every process is stopped at teardown.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support.descriptors import nofile_at_start
from support.history import DELETE, FAIL, OK, READ, UNKNOWN, WRITE
from support.orphans import die_with_parent
from support.wait import wait_for

SERVE = [str(Path(sys.executable).with_name("limedb")), "serve"]
# Every test node runs the secure default: cluster members share this secret (unless a test
# gives its nodes another one), and the test clients present it to the admin routes.
SECRET = "limedb-test-cluster-secret"
SECRET_HEADERS = {"x-cluster-secret": SECRET}


def free_port_pair(host: str) -> tuple[int, int]:
    """A port p on `host` such that p and p + 1000 are both free (public + internal)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port + 1000 > 65535:
            continue
        try:
            with socket.socket() as other:
                other.bind((host, port + 1000))
        except OSError:
            continue
        return port, port + 1000
    raise RuntimeError(f"no free port pair on {host}")


class SecretThenUser(httpx.Auth):
    """The cluster secret, and once users exist (it is refused then: 401) Basic credentials of
    `user`: for helpers that poll a cluster across the moment its first user is made."""

    def __init__(self, user: tuple[str, str]) -> None:
        self.basic = httpx.BasicAuth(*user)

    def auth_flow(self, request: httpx.Request):
        request.headers["x-cluster-secret"] = SECRET
        response = yield request
        if response.status_code == 401:
            yield from self.basic.auth_flow(request)


@dataclass
class Node:
    index: int
    host: str
    port: int
    internal_port: int
    data_dir: Path
    seeds: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    # RLIMIT_NOFILE the process starts with (None: inherited); support.descriptors changes
    # it at run time.
    nofile: int | None = None
    # "https" for a node with tls_mode on or required (tests/cluster/test_tls.py).
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def preexec(self) -> Callable[[], None] | None:
        """What the child runs before exec (die with pytest, the descriptor limit), for
        subprocess.Popen."""
        return die_with_parent(None if self.nofile is None else nofile_at_start(self.nofile))

    def serve_command(self) -> list[str]:
        """The `limedb serve` command line of this node."""
        return [
            *SERVE,
            "--host", self.host,
            "--port", str(self.port),
            "--data-dir", str(self.data_dir / "data"),
            "--advertise-url", self.url,
            "--seeds", ",".join(self.seeds),
        ]  # fmt: skip

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LIMEDB_RESP_PORT": "0", "LIMEDB_CLUSTER_SECRET": SECRET, **self.env}
        env["LIMEDB_INTERNAL_PORT"] = str(self.internal_port)
        args = self.serve_command()
        log = open(self.data_dir / "node.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec()
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        assert self.proc is not None
        if self.running():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        path = self.data_dir / "node.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def gossip(self, client: httpx.Client) -> dict:
        return client.get(f"{self.url}/api/v1/cluster/gossip", timeout=2.0).json()

    def peer_status(self, client: httpx.Client, other: Node) -> str:
        for peer in self.gossip(client).get("peer_details", []):
            if peer["url"] == other.url:
                return peer["status"]
        return "unknown"

    def hears(self, client: httpx.Client, other: Node) -> bool:
        """Whether gossip from `other` has reached this node and judges it active."""
        for peer in self.gossip(client).get("peer_details", []):
            if peer["url"] == other.url:
                return peer["status"] == "active" and peer["heartbeat"] > 0
        return False


def loopback_nodes(base: Path, count: int, first_host: int, name: str = "node") -> list[Node]:
    """`count` nodes on 127.0.0.<first_host + i>, data in base/<name>-<i>, each with all of
    them as seeds."""
    nodes = []
    for i in range(count):
        host = f"127.0.0.{first_host + i}"
        port, internal = free_port_pair(host)
        nodes.append(Node(i, host, port, internal, base / f"{name}-{i}"))
    for node in nodes:
        node.seeds = [n.url for n in nodes]
    return nodes


@dataclass
class Cluster:
    nodes: list[Node]
    client: httpx.Client

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready()

    def wait_ready(self, nodes: list[Node] | None = None, timeout_s: float = 30.0) -> None:
        """Wait until every node serves and sees every other running node as active."""
        nodes = nodes or [n for n in self.nodes if n.running()]
        for node in nodes:
            wait_for(
                lambda node=node: (
                    self.client.get(f"{node.url}/readyz", timeout=1.0).status_code == 200
                ),
                timeout_s,
                f"{node.url} ready\n{node.log_tail()}",
            )
        for node in nodes:
            for other in nodes:
                if other is not node:
                    wait_for(
                        lambda node=node, other=other: (
                            node.peer_status(self.client, other) == "active"
                        ),
                        timeout_s,
                        f"{node.url} to see {other.url} active",
                    )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Workload:
    """Threads issuing native-route writes, deletes and reads against chosen nodes, every
    operation recorded in a History. Targets can change while it runs (e.g. after a kill)."""

    def __init__(
        self,
        history,
        targets: list[str],
        *,
        keys: int = 200,
        threads: int = 4,
        delete_every: int = 10,
        read_consistency: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.history = history
        self.targets = list(targets)
        self.keys = [f"k{i:05d}" for i in range(keys)]
        self.threads = threads
        self.delete_every = delete_every
        self.read_consistency = read_consistency
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout_s + 5)

    def acknowledged(self, since: float = 0.0) -> int:
        return sum(1 for op in self.history.ops if op.outcome == OK and op.start >= since)

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        seq = 0
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                seq += 1
                url = rng.choice(self.targets)
                key = rng.choice(self.keys)
                path = f"{url}/v1/kv/{key}"
                if seq % 2:
                    self._read(client, url, path, key)
                elif seq % (2 * self.delete_every) == 0:
                    self._mutate(client, url, path, key, None)
                else:
                    self._mutate(client, url, path, key, f"w{worker}-{seq}".encode())

    def _mutate(
        self,
        client: httpx.Client,
        url: str,
        path: str,
        key: str,
        value: bytes | None,
        params: dict | None = None,
    ) -> None:
        op = self.history.begin(WRITE if value is not None else DELETE, key, value, url)
        try:
            response = (
                client.delete(path, params=params)
                if value is None
                else client.put(path, content=value, params=params)
            )
        except httpx.TimeoutException:
            self.history.finish(op, UNKNOWN, timed_out=True)
            return
        except httpx.HTTPError:
            self.history.finish(op, UNKNOWN)
            return
        if response.status_code < 300:
            self.history.finish(op, OK)
        elif response.status_code == 404 and value is None:
            self.history.finish(op, OK)  # deleting an absent key still writes the tombstone
        else:
            # A 503 may follow a write that reached some replicas: it may surface later.
            self.history.finish(op, UNKNOWN)

    def _read(self, client: httpx.Client, url: str, path: str, key: str) -> None:
        op = self.history.begin(READ, key, None, url)
        params = {"consistency": self.read_consistency} if self.read_consistency else None
        try:
            response = client.get(path, params=params)
        except httpx.HTTPError:
            self.history.finish(op, FAIL)
            return
        if response.status_code == 200:
            self.history.finish(op, OK, response.content)
        elif response.status_code == 404:
            self.history.finish(op, OK, None)
        else:
            self.history.finish(op, FAIL)
