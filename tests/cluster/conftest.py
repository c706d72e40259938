"""Fixtures of the cluster tests: real node processes, all stopped at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop
from support.cluster import SECRET_HEADERS, Cluster, loopback_nodes
from support.transitions import Fleet

# Nodes run on uvloop; in-process transport tests also run on the standard loop (embedding).
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """Runs a coroutine to completion on a fresh event loop, once per loop implementation."""

    def run_on_loop(coroutine):
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(coroutine)

    return run_on_loop


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build and start a cluster: make_cluster(nodes=3, env={...}); all stopped at teardown."""
    clusters: list[Cluster] = []
    client = httpx.Client(timeout=10.0, headers=SECRET_HEADERS)

    def make(nodes: int = 3, env: dict[str, str] | None = None, start: bool = True) -> Cluster:
        members = loopback_nodes(tmp_path, nodes, len(clusters) * 10 + 2, f"node-{len(clusters)}")
        for node in members:
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


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A growing and shrinking cluster (support.transitions.Fleet) whose nodes run with the
    requesting module's `ENV`; every process is stopped at teardown."""
    fleet = Fleet(tmp_path, request.module.ENV, first_host=170)
    try:
        yield fleet
    finally:
        fleet.stop()
