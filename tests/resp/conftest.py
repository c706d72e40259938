"""Fixtures of the RESP tests: a real `redis-server`, one LimeDB node and a 3-node LimeDB
cluster, each with its RESP listener on a free port; every process is stopped at teardown.

The LimeDB servers are shared by the whole tests/resp session (starting processes is the slow
part); tests keep apart by using their own key prefixes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from respservers import (
    REDIS_SERVER,
    RespEndpoint,
    free_port,
    limedb_cluster,
    require_redis_tools,
    wait_until,
)
from support.cluster import Cluster


@pytest.fixture
def redis_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RespEndpoint]:
    """A fresh real redis-server (Debian) on a free port with a temporary directory."""
    require_redis_tools()
    workdir = tmp_path_factory.mktemp("redis-server")
    port = free_port("127.0.0.1")
    args = [
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    endpoint = RespEndpoint("127.0.0.1", port)
    try:
        wait_until(lambda: endpoint.client().ping(), 10, "redis-server to answer PING")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def limedb_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RespEndpoint]:
    """One standalone LimeDB node (periodic durability) with its RESP listener."""
    with limedb_cluster(tmp_path_factory.mktemp("limedb-single"), 1, 60) as (_, endpoints):
        yield endpoints[0]


@pytest.fixture(scope="session")
def limedb_three(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, list[RespEndpoint]]]:
    """A 3-node LimeDB cluster (RF=3, quorum reads and writes) with RESP on every node."""
    with limedb_cluster(tmp_path_factory.mktemp("limedb-three"), 3, 70) as started:
        yield started
