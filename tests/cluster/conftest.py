"""Fixtures of the cluster tests: real node processes, all stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.cluster import Cluster, Node, free_port_pair


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build and start a cluster: make_cluster(nodes=3, env={...}); all stopped at teardown."""
    clusters: list[Cluster] = []
    client = httpx.Client(timeout=10.0)

    def make(nodes: int = 3, env: dict[str, str] | None = None, start: bool = True) -> Cluster:
        members = []
        for i in range(nodes):
            host = f"127.0.0.{len(clusters) * 10 + i + 2}"
            port, internal = free_port_pair(host)
            members.append(Node(i, host, port, internal, tmp_path / f"node-{len(clusters)}-{i}"))
        for node in members:
            node.seeds = [m.url for m in members]
            node.env = dict(env or {})
        cluster = Cluster(members, client)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
        client.close()
