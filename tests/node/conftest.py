"""Fixtures that start `limedb serve` as real processes (see nodeproc.py) and stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nodeproc import NodeProcess


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Make (not yet started) node processes with their own data directories."""
    made: list[NodeProcess] = []

    def make(*extra_args: str, env: dict[str, str] | None = None) -> NodeProcess:
        index = len(made)
        node = NodeProcess(
            data_dir=tmp_path / f"node{index}",
            log_path=tmp_path / f"node{index}.log",
            extra_args=list(extra_args),
            env=dict(env or {}),
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """One running node with sync durability."""
    return node_factory("--durability", "sync").start()


@pytest.fixture(scope="module")
def module_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One running node shared by the tests of a module (they use distinct keys)."""
    base = tmp_path_factory.mktemp("node")
    node = NodeProcess(data_dir=base / "data", log_path=base / "node.log")
    node.start()
    yield node
    node.stop()
