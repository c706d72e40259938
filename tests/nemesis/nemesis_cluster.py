"""The nemesis campaign's cluster: real nodes in network namespaces, each on its own small
tmpfs disk, with a cluster secret and a password-protected RESP port, grown and shrunk by
ring changes that run in the background while faults strike.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
from pathlib import Path

import httpx
from limedb.client import Client, LimeDBError, Refused
from support import descriptors, diskfull, faketime, netns
from support.cluster import Node
from support.diskfull import SmallDisk
from support.netns_nodes import NamespacedFleet, NamespacedNode
from support.wait import TRANSIENT, wait_for

DISK_BYTES = 48 << 20
NODE_ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    "LIMEDB_STREAM_MB_PER_S": "0",
    # Writes through a cut-off node give up after this (503, then UNKNOWN in the history).
    "LIMEDB_REQUEST_TIMEOUT_MS": "2000",
    # A transition whose nodes stay unreachable rolls back instead of blocking the next one.
    "LIMEDB_TRANSITION_TIMEOUT_S": "30",
    "LIMEDB_RESP_PORT": "6379",
}


class NemesisNode(NamespacedNode):
    """A namespaced node whose data directory is a small tmpfs, so that it can be filled, and
    (every other node) whose wall clock is libfaketime's, so that it can be stepped and drifted.

    Only every other node runs under libfaketime because its preload slows a node's writes
    down about tenfold at p90 (stalls of 100-800 ms; measured on Debian 12's libfaketime
    0.9.10): with every node under it, the workload would do a tenth of its operations."""

    def __init__(self, index: int, ns: netns.Namespace, data_dir: Path) -> None:
        super().__init__(index, ns, data_dir)
        self.disk = SmallDisk(data_dir / "data", DISK_BYTES)
        self.clock = faketime.skew(self, 0.0) if index % 2 else None
        self.nofile_before: int | None = None  # the soft limit before `limit_files`

    def start(self) -> None:
        if not self.disk.mounted:
            self.disk.mount()
        super().start()

    def limit_files(self, spare: int) -> int:
        """Lower the running process's open-file limit to what it holds plus `spare`."""
        assert self.proc is not None
        limit = descriptors.open_descriptors(self.proc.pid) + spare
        self.nofile_before = descriptors.set_nofile(self.proc.pid, limit)
        return limit

    def unlimit_files(self) -> None:
        if self.nofile_before is not None and self.running():
            with contextlib.suppress(ProcessLookupError):
                descriptors.set_nofile(self.proc.pid, self.nofile_before)
        self.nofile_before = None


class NemesisFleet(NamespacedFleet):
    """The campaign's nodes. `members` are the ring's members as the last finished ring change
    left them; `lock` serialises process control between the fault and the ring threads."""

    def __init__(self, root: Path, lab: netns.NetLab) -> None:
        self.secret = secrets.token_hex(16)
        self.resp_password = secrets.token_hex(8)
        env = {
            **NODE_ENV,
            "LIMEDB_CLUSTER_SECRET": self.secret,
            "LIMEDB_RESP_PASSWORD": self.resp_password,
        }
        super().__init__(root, env, lab)
        self.http.close()
        self.http = httpx.Client(timeout=10.0, headers={"x-cluster-secret": self.secret})
        self.rf = 3
        self.lock = threading.RLock()

    def _make(self, seeds: list[str] | None, extra_env: dict[str, str]) -> Node:
        ns = self.lab.add_node()
        node = NemesisNode(len(self.nodes), ns, self.root / f"node-{len(self.nodes)}")
        node.env = {**node.env, **self.env, **extra_env}  # keeps the fake clock's
        node.seeds = list(seeds or [])
        self.nodes.append(node)
        return node

    def admin(self, node: Node | None = None) -> Client:
        url = (node or self.members[0]).url
        return Client(url, timeout=5.0, retries=0, cluster_secret=self.secret)

    def stop(self, keep_data: bool = False) -> None:
        """Stop every node and unmount its disk; `keep_data` copies each disk's files next to
        it first (data-kept/), for the report of a failed campaign."""
        super().stop()
        for node in self.nodes:
            if diskfull.is_mounted(node.disk.path):
                if keep_data:
                    shutil.copytree(node.disk.path, node.data_dir / "data-kept", dirs_exist_ok=True)
                node.disk.unmount()

    # ------------------------------------------------------------------ ring changes

    def running_members(self) -> list[NemesisNode]:
        return [m for m in self.members if m.running()]

    def start_change(self, start) -> tuple[str, Node]:
        """Start a ring change through any member that takes it; a 409 (a transition still
        running, e.g. one resumed after a restart) is waited out. Returns (id, via)."""

        def attempt():
            for via in self.running_members():
                try:
                    with self.admin(via) as client:
                        return start(client)["transition"]["id"], via
                except Refused:
                    return None
                except (httpx.HTTPError, LimeDBError):
                    continue
            return None

        return wait_for(attempt, 90, "a member to accept the ring change", step_s=0.5)

    def wait_ended(self, tid: str, timeout_s: float = 120.0) -> dict:
        """Wait until transition `tid` ended, as any running member reports it."""

        def ended():
            for via in self.running_members():
                try:
                    last = self.status(via).get("last_transition") or {}
                except (httpx.HTTPError, LimeDBError):
                    continue
                if last.get("id") == tid and last["phase"] in ("done", "rolled_back"):
                    return last
            return None

        return wait_for(ended, timeout_s, f"transition {tid} to end", step_s=0.5)

    def wait_quiet(self, timeout_s: float = 120.0) -> None:
        """No transition running, as every member reports it."""

        def quiet() -> bool:
            return all(self.status(m)["transition"] is None for m in self.members)

        wait_for(
            quiet,
            timeout_s,
            "every transition to end",
            step_s=0.5,
            tolerate=(*TRANSIENT, LimeDBError),
        )

    def hints_pending(self, node: Node) -> dict[str, int]:
        """`node`'s hints not yet replayed, by target (node id = URL here)."""
        health = self.http.get(f"{node.url}/api/v1/health", timeout=5.0).json()
        return health["storage"]["cluster"]["hints"]["pending_by_target"]

    def serves(self, node: Node, key: str) -> bool:
        """Whether `node` answers a read and a write of `key` (ValueError says how not)."""
        read = self.http.get(f"{node.url}/v1/kv/{key}", timeout=5.0)
        write = self.http.put(f"{node.url}/v1/kv/{key}", content=b"probe", timeout=5.0)
        if read.status_code in (200, 404) and write.status_code == 200:
            return True
        raise ValueError(
            f"read {read.status_code} {read.text[:200]}; write {write.status_code} {write.text[:200]}"
        )
