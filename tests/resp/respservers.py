"""RESP servers for the tests: real LimeDB nodes with their RESP listener on free ports, the
endpoint clients connect to, and the polling helper the fixtures wait with.

(A module of its own, not conftest.py, so that test modules can import it by a unique name.)
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.cluster import Cluster, Node, free_port_pair
from support.wait import TRANSIENT, wait_for

REDIS_SERVER = shutil.which("redis-server")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# Polling for the RESP tests: a redis-py error while a listener starts also means "not yet".
wait_until = functools.partial(wait_for, tolerate=(*TRANSIENT, redis.RedisError))


@dataclass
class RespEndpoint:
    """Where a RESP listener is: host and port, and a redis-py client factory."""

    host: str
    port: int
    password: str | None = None

    def client(self, **kwargs) -> redis.Redis:
        # No silent retries: a retried pipeline or INCR would hide the error and apply twice.
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_timeout=30, **kwargs
        )


def require_redis_tools() -> None:
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.fail(
            "redis-server / redis-cli not installed: run `bash scripts/system-deps.sh` "
            "(make test does) to install Debian's redis-server and redis-tools"
        )


@contextlib.contextmanager
def limedb_cluster(
    root: Path,
    count: int,
    first_host: int,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Iterator[tuple[Cluster, list[RespEndpoint]]]:
    """Start `count` LimeDB nodes (one node = standalone) with RESP, each under a descriptor
    limit of `nofile` if given; stop them at exit."""
    cluster, endpoints = _limedb_nodes(root, count, first_host, env or {})
    for node in cluster.nodes:
        node.nofile = nofile
    try:
        cluster.start()
        for node, endpoint in zip(cluster.nodes, endpoints, strict=True):
            wait_until(
                lambda endpoint=endpoint: (
                    socket.create_connection((endpoint.host, endpoint.port), 1).close() or True
                ),
                30,
                f"RESP port of {node.url}\n{node.log_tail()}",
            )
        yield cluster, endpoints
    finally:
        cluster.stop()
        cluster.client.close()


def _limedb_nodes(
    root: Path, count: int, first_host: int, env: dict[str, str]
) -> tuple[Cluster, list[RespEndpoint]]:
    nodes, endpoints = [], []
    for i in range(count):
        host = f"127.0.0.{first_host + i}"
        port, internal = free_port_pair(host)
        resp_port = free_port(host)
        node_env = {
            "LIMEDB_RESP_PORT": str(resp_port),
            "LIMEDB_DURABILITY": "periodic",
            "LIMEDB_LOG_LEVEL": "warning",
            **env,
        }
        nodes.append(Node(i, host, port, internal, root / f"node-{i}", env=node_env))
        endpoints.append(RespEndpoint(host, resp_port, env.get("LIMEDB_RESP_PASSWORD")))
    for node in nodes:
        node.seeds = [n.url for n in nodes]
    return Cluster(nodes, httpx.Client(timeout=10.0)), endpoints
