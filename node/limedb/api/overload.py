"""Admission control of client requests: a bounded number run at once, a bounded FIFO queue
waits for a slot, and anything beyond is refused at once with 503 and Retry-After.

Why both bounds: the event loop serves every running request a little on each turn, so the
number running bounds how long one turn takes, and with it how quickly anything (a refusal, a
probe, a gossip message) is answered; the queue absorbs bursts without refusing them, and a
waiting request costs only a parked future (and its body), so the queue bound caps memory.
A refusal is decided before the request body is read or any work is done, so refusing stays
cheap however far the offered load exceeds what the node can serve. The refusal itself
(`fastpath.overloaded`) is the same 503 on the wire-level and the ASGI path.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    """At most `limit` requests run (0 = no limit); up to `queue_limit` more wait their turn."""

    __slots__ = ("limit", "queue_limit", "running", "_waiters", "admitted", "queued", "rejected")

    def __init__(self, limit: int, queue_limit: int) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self.admitted = 0
        self.queued = 0
        self.rejected = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def full(self) -> bool:
        """Whether a request arriving now would be refused (nothing free to run or wait)."""
        return bool(self.limit) and (
            self.running >= self.limit and len(self._waiters) >= self.queue_limit
        )

    def try_enter(self) -> bool:
        """Take a running slot if one is free right now (the caller must `leave()` after)."""
        # While anyone waits every slot is taken (a freed slot passes straight to a waiter),
        # so this never jumps the queue.
        if self.limit and self.running >= self.limit:
            return False
        self.running += 1
        self.admitted += 1
        return True

    def enqueue(self) -> asyncio.Future | None:
        """A place in the queue (await it, then run, then `leave()`), or None when full
        (counted as a refusal)."""
        if len(self._waiters) >= self.queue_limit:
            self.rejected += 1
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued += 1
        return waiter

    async def wait(self, waiter: asyncio.Future) -> None:
        """Wait for the slot `enqueue` promised; a cancelled wait gives its slot back."""
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # the slot was handed over just before the cancel
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        self.admitted += 1

    def leave(self) -> None:
        """A running request finished: its slot passes to the oldest waiter, if any."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    def stats(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "queue_limit": self.queue_limit,
            "running": self.running,
            "waiting": len(self._waiters),
            "admitted": self.admitted,
            "queued": self.queued,
            "rejected": self.rejected,
        }
