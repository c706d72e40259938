"""The coordinated requests a node has in flight, counted by the generation they began in.

A transition's cleanup purges the moved ranges from their old owners. A read that a node
began while it still routed by the old owners (a slow peer, a paused process) must not reach
them after that, or it answers "no such key" for an acknowledged write. So before the purge
the driver asks every node (RPC kind DRAIN, limedb.cluster.ring.exchange) to start a new
generation, which it does right after adopting the cleanup record, and to answer once every
request of the generations before has finished. A request bounded by the request timeout
finishes within it, so the wait is that long at most and usually a few milliseconds.
"""

from __future__ import annotations

import asyncio


class InFlight:
    """Requests in flight by generation: `begin` returns the one to pass to `end`."""

    __slots__ = ("generation", "_counts", "_finished")

    def __init__(self) -> None:
        self.generation = 0
        self._counts: dict[int, int] = {0: 0}
        # Set when the last request of a generation before the current one ends.
        self._finished: asyncio.Event | None = None

    def begin(self) -> int:
        generation = self.generation
        self._counts[generation] += 1
        return generation

    def end(self, generation: int) -> None:
        left = self._counts[generation] - 1
        if left or generation == self.generation:
            self._counts[generation] = left
            return
        del self._counts[generation]
        if self._finished is not None:
            self._finished.set()

    def advance(self) -> int:
        """Start a new generation; returns it (what `older` and `drained` count before)."""
        self._counts = {g: n for g, n in self._counts.items() if n}
        self.generation += 1
        self._counts[self.generation] = 0
        return self.generation

    def older(self, generation: int) -> int:
        """How many requests that began before `generation` are still in flight."""
        return sum(n for g, n in self._counts.items() if g < generation)

    async def drained(self, generation: int, timeout_s: float) -> bool:
        """Wait until no request that began before `generation` is in flight; False if some
        still were after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.older(generation):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._finished is None:
                self._finished = asyncio.Event()
            self._finished.clear()
            try:
                await asyncio.wait_for(self._finished.wait(), remaining)
            except TimeoutError:
                return False
        return True
