"""Real `limedb serve` nodes inside the network lab's namespaces (alone, or as a growing and
shrinking fleet), and the check that replicas hold identical data: Merkle trees of every ring
range, built from each stopped owner's disk.
"""

from __future__ import annotations

from pathlib import Path

from limedb.cluster.keys import MAX_TOKEN, user_key
from limedb.cluster.merkle import MerkleTree, diff, storage_bounds
from limedb.cluster.ring.placement import Ring
from limedb.storage import Engine, EngineOptions

from support import netns
from support.cluster import SECRET, Node
from support.transitions import Fleet

PORT, INTERNAL_PORT = 8484, 9484


class NamespacedNode(Node):
    """A `limedb serve` process inside its own network namespace, at the namespace's address
    (every port is free there, so every node uses the same ones)."""

    def __init__(self, index: int, ns: netns.Namespace, data_dir: Path) -> None:
        super().__init__(index, ns.address, PORT, INTERNAL_PORT, data_dir)
        self.ns = ns

    def start(self) -> None:
        assert not self.running(), "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = self.serve_command()
        env = {
            "LIMEDB_RESP_PORT": "0",
            "LIMEDB_INTERNAL_PORT": str(self.internal_port),
            "LIMEDB_CLUSTER_SECRET": SECRET,
            **self.env,
        }
        # `env` prefixes the command so that `ip netns exec` itself runs with our environment.
        with open(self.data_dir / "node.log", "ab") as log:
            self.proc = self.ns.popen(
                ["env", *(f"{k}={v}" for k, v in env.items()), *args],
                stdout=log,
                stderr=log,
                preexec_fn=self.preexec(),
            )


class NamespacedFleet(Fleet):
    """The transition tests' fleet, each node in a namespace of the lab."""

    def __init__(self, root: Path, env: dict[str, str], lab: netns.NetLab) -> None:
        super().__init__(root, env)
        self.lab = lab

    def _make(self, seeds: list[str] | None, extra_env: dict[str, str]) -> Node:
        ns = self.lab.add_node()
        node = NamespacedNode(len(self.nodes), ns, self.root / f"node-{len(self.nodes)}")
        node.env = {**self.env, **extra_env}
        node.seeds = list(seeds or [])
        self.nodes.append(node)
        return node


def _tie_note(held: list[list[tuple]]) -> str:
    """Name the known cause when replicas hold different values under one timestamp: two
    coordinators stamped the same HLC value, and storage breaks ties only by tombstone."""
    by_key: dict[bytes, set[tuple]] = {}
    for versions in held:
        for key, ts, tombstone, value in versions:
            by_key.setdefault(key, set()).add((ts, tombstone, value))
    tied = [k for k, vs in by_key.items() if len(vs) > 1 and len({v[0] for v in vs}) == 1]
    return f" (equal-timestamp conflict on {tied})" if tied else ""


def _spans(ring: Ring) -> list[tuple[int, int, int]]:
    """(start, end, probe token) of every ring range, a wrapping one cut at zero."""
    spans = []
    for r in ring.ranges():
        if r.start <= r.end:
            spans.append((r.start, r.end, r.end))
        else:
            spans.extend(((r.start, MAX_TOKEN, r.end), (0, r.end, r.end)))
    return spans


def replica_differences(nodes: list[Node], ring: Ring, rf: int, depth: int = 6) -> list[str]:
    """For every ring range, compare the Merkle trees of its owners' data (the nodes must be
    stopped); on a difference, describe every version of the differing leaves on each owner.
    `ring` maps node ids to the nodes' URLs."""
    by_url = {node.url: node for node in nodes}
    engines = {
        node_id: Engine.open(by_url[url].data_dir / "data", EngineOptions(durability="none"))
        for node_id, url in ring.members.items()
    }
    try:
        problems = []
        for start, end, probe in _spans(ring):
            owners = ring.replicas(probe, rf)
            trees = [MerkleTree.from_storage(engines[o], start, end, depth) for o in owners]
            for owner, tree in zip(owners[1:], trees[1:], strict=True):
                for lo, hi in diff(trees[0], tree):
                    low, high = storage_bounds(lo, hi)
                    held = {
                        o: [
                            (user_key(skey), v.ts, v.tombstone, v.value)
                            for skey, v in engines[o].iter_range(low, high, include_tombstones=True)
                        ]
                        for o in owners
                    }
                    problems.append(
                        f"{owner} differs from {owners[0]} in {lo}..{hi}: {held}"
                        + _tie_note(list(held.values()))
                    )
        return problems
    finally:
        for engine in engines.values():
            engine.close()
