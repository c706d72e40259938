"""Request budgets on the internal RPC: how long the sender still waits, as a relative number
of milliseconds that each side measures on its own monotonic clock, and how long this
process's event loop did not run, which is how long a request may have sat unread.

No wall clock is compared across nodes: a replica whose clock runs seconds ahead or behind
judges a request's budget exactly as one with a perfect clock does.
"""

from __future__ import annotations

import asyncio
import math

TICK_S = 0.05
# A stall noticed by the tick this recently still applies to the frames read now: libuv runs
# due timers before it polls sockets, so after a pause the tick can fire first.
STALL_WINDOW_S = 0.05


def budget_ms(timeout_s: float) -> int:
    """The budget a request carries: the sender's timeout in whole milliseconds, at least 1
    (0 on the wire means "no deadline")."""
    return max(1, int(timeout_s * 1000))


def expired(budget: int, waited_s: float) -> bool:
    """Whether a request with `budget` ms, which may have waited `waited_s` unread, is one
    its sender no longer waits for."""
    return budget != 0 and waited_s * 1000 >= budget


class LoopStalls:
    """Notices when this process's event loop did not run (SIGSTOP, a VM pause, a callback
    that blocked): a frame read right afterwards may have waited in the kernel that long."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last_tick = 0.0
        self._stall_s = 0.0
        self._stall_seen = -math.inf

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._last_tick = self._loop.time()
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._loop = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        late = now - self._last_tick - TICK_S
        if late > TICK_S:
            self._stall_s, self._stall_seen = late, now
        self._last_tick = now
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def waited_s(self) -> float:
        """How long a frame read now may have waited unread (0 when the loop kept running)."""
        if self._loop is None:
            return 0.0
        now = self._loop.time()
        current = now - self._last_tick - TICK_S
        recent = self._stall_s if now - self._stall_seen < STALL_WINDOW_S else 0.0
        return max(current, recent, 0.0)
