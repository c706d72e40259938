"""A `limedb serve` process on a free 127.0.0.x port, as the node tests drive it.

`NodeProcess` is the handle the node tests use: start (optionally under a descriptor limit,
`nofile`), wait until /readyz, SIGTERM, kill -9, restart on the same data directory. Every
process started by a test is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from support.descriptors import nofile_at_start
from support.orphans import die_with_parent
from support.wait import wait_for

LIMEDB = str(Path(sys.executable).with_name("limedb"))
# Settings of the surrounding shell must not leak into the node under test.
_FOREIGN_ENV = ("SERVER_PORT", "NODE_URL", "NODE_PEERS", "VIRTUAL_NODES", "DATA_DIR")

T = TypeVar("T")


def free_address() -> tuple[str, int]:
    """A loopback address 127.0.0.x (x random, so parallel runs rarely collide) and a free port."""
    host = f"127.0.0.{random.randint(2, 250)}"
    with socket.socket() as probe:
        probe.bind((host, 0))
        return host, probe.getsockname()[1]


@dataclass
class NodeProcess:
    data_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    host: str = ""
    port: int = 0
    proc: subprocess.Popen | None = None
    # RLIMIT_NOFILE the process starts with (None: inherited).
    nofile: int | None = None

    def __post_init__(self) -> None:
        if not self.host:
            self.host, self.port = free_address()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, wait_ready: bool = True) -> NodeProcess:
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LIMEDB_") and k not in _FOREIGN_ENV
        }
        env.update({"LIMEDB_RESP_PORT": "0", "LIMEDB_LOG_LEVEL": "warning", **self.env})
        args = [
            LIMEDB, "serve",
            "--host", self.host,
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        preexec = die_with_parent(None if self.nofile is None else nofile_at_start(self.nofile))
        self.proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec
        )
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            return httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200

        wait_for(ready, timeout_s, f"{self.url}/readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(timeout_s=10.0)
        except subprocess.TimeoutExpired:
            self.kill9()


class WriteLoad:
    """Concurrent writers against a node in a background thread, recording acknowledged writes.

    A write counts as acknowledged only when the node answered 200; writes that fail (the node
    died or refused) are simply not recorded. Writers stop at `stop()` or after their first
    connection error.
    """

    def __init__(self, url: str, writers: int = 32, value_size: int = 100) -> None:
        self.url = url
        self.writers = writers
        self.padding = "p" * max(0, value_size - 20)
        self.acked: dict[str, str] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> WriteLoad:
        self._thread.start()
        return self

    def wait_for_acks(self, count: int, timeout_s: float = 20.0) -> None:
        wait_for(lambda: len(self.acked) >= count, timeout_s, f"{count} acknowledged writes")

    def stop(self, timeout_s: float = 15.0) -> dict[str, str]:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "write load did not stop"
        return dict(self.acked)

    async def _writer(self, client: httpx.AsyncClient, writer: int) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{writer}-{i}"
            value = f"{key}-{self.padding}"
            try:
                response = await client.post("/api/v1/set", json={"key": key, "value": value})
            except httpx.HTTPError:
                self.errors += 1
                return
            if response.status_code == 200:
                self.acked[key] = value
            i += 1

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.writers)
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0, limits=limits) as client:
            await asyncio.gather(*(self._writer(client, w) for w in range(self.writers)))


def missing_writes(url: str, acked: dict[str, str]) -> list[str]:
    """Acknowledged keys that do not read back with the acknowledged value."""
    missing = []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for key, value in acked.items():
            response = client.get(f"/api/v1/get/{key}")
            if response.status_code != 200 or response.json()["value"] != value:
                missing.append(key)
    return missing
