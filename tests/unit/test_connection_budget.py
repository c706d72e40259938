"""The client-connection budget against this process's real RLIMIT_NOFILE, and the keys page's
total (pure)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest
from limedb.api.public import page_total
from limedb.connections import ConnectionBudget, descriptor_limit, out_of_descriptors


@pytest.fixture
def own_limit() -> Iterator[None]:
    """Restore this process's descriptor limit after a test changed it."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_budget_follows_the_limit_and_both_caps(own_limit) -> None:
    budget = ConnectionBudget(reserve=descriptor_limit() - 3)
    assert budget.capacity() == 3
    assert budget.try_open("http", cap=10) and budget.try_open("resp", cap=10)
    assert not budget.try_open("resp", cap=1)  # the listener's own cap
    assert budget.try_open("http", cap=10)
    assert not budget.try_open("http", cap=10)  # the descriptor budget, HTTP and RESP together
    assert budget.refused == {"http": 1, "resp": 1, "probe": 0}
    # Beyond the caps, a few places for probes (from the descriptor reserve).
    assert budget.try_open_probe(slots=1) and not budget.try_open_probe(slots=1)
    assert budget.refused["probe"] == 1
    budget.release("probe")
    budget.release("resp")
    assert budget.try_open("http", cap=10)
    # A limit lowered at run time counts at the next accept.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    assert budget.capacity() == 2 and not budget.try_open("http", cap=10)


def test_running_out_of_descriptors_is_recognised(own_limit) -> None:
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The next descriptor would be `lowest_free`, which the limit no longer allows.
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    with pytest.raises(OSError) as raised:
        os.close(os.open(os.devnull, os.O_RDONLY))
    assert out_of_descriptors(raised.value)
    budget = ConnectionBudget(reserve=0)
    assert "out of file descriptors" in budget.exhausted(raised.value)
    assert budget.descriptor_errors == 1
    assert not out_of_descriptors(FileNotFoundError(2, "No such file or directory"))


@pytest.mark.parametrize(
    ("counted", "asked", "listed", "total"),
    [
        (24, 100_000_000, None, 24),  # the page lies past the count: nothing listed
        (24, 30, 24, 24),  # the listing reached the last key
        (24, 20, 20, 24),  # a full listing: at least that many
        (10, 20, 15, 15),  # the count was low (an estimate): the listing is exact
        (50, 20, 20, 50),
    ],
)
def test_the_keys_page_total(counted: int, asked: int, listed: int | None, total: int) -> None:
    assert page_total(counted, asked, listed) == total
