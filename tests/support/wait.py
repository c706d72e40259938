"""Waiting for a condition with a deadline: the one polling helper of the test suite.

Tests await what they expect (a node ready, a key replicated, a pod running) instead of
sleeping for a guessed time; a wait that runs out fails naming what it waited for and the last
error seen, so a slow machine makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")

# Errors that mean "not yet" while a server starts or a peer catches up.
TRANSIENT: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError, ValueError, KeyError)


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def wait_for(
    condition: Callable[[], T],
    timeout_s: float,
    what: str | Callable[[], str],
    step_s: float = 0.05,
    *,
    tolerate: tuple[type[BaseException], ...] = TRANSIENT,
) -> T:
    """Poll `condition` until it returns something truthy and return that.

    Exceptions in `tolerate` count as "not yet". `what` names the condition in the failure; a
    callable is evaluated at the deadline, to report the state at that moment.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except tolerate as exc:
            last_error = exc
        time.sleep(step_s)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {_describe(what)} (last error: {last_error!r})"
    )


async def wait_for_async(
    condition: Callable[[], object],
    timeout_s: float = 10.0,
    what: str | Callable[[], str] = "the condition",
    *,
    step_s: float = 0.02,
) -> None:
    """`wait_for` for code running on an event loop: yields to the loop between polls."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {_describe(what)}")
        await asyncio.sleep(step_s)
