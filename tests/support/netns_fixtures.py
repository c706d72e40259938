"""Pytest fixtures for tests that need the network lab (tests/support/netns.py): one lab per
test, swept of leftovers from crashed runs first and checked to leave nothing behind. A
conftest imports them to offer them to its tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import netns


@pytest.fixture
def netns_ready() -> None:
    """Skip (with the reason) where namespaces cannot be made; sweep earlier crashed runs."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(f"fault tests need network namespaces: {reason}")
    netns.sweep()


@pytest.fixture
def netlab(netns_ready) -> Iterator[netns.NetLab]:
    lab = netns.NetLab()
    try:
        yield lab
    finally:
        lab.close()
    assert lab.names() == [], f"namespaces left behind: {lab.names()}"
