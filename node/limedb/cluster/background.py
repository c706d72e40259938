"""The budget of a node's background work (range streaming, anti-entropy repair, hint replay),
so that it cannot starve client requests.

Background work runs in bounded slots (a few bulk batches at once, whatever asks), and before
each batch or hint it yields to clients while they queue for admission (the API tells through
`pressure`): it waits a little, a bounded number of times, then goes on anyway, so client
overload slows background work down but never stops it (a transition must still finish, hints
must still drain). Byte rates stay with each kind of work (`stream_mb_per_s`,
`repair_mb_per_s`); compaction has its own rate limit and runs in worker threads/processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

YIELD_S = 0.02
MAX_YIELDS = 10  # at least one batch per slot every ~0.2 s under sustained client overload


class BackgroundBudget:
    """Slots for bulk background batches and a yield to clients under pressure."""

    def __init__(self, slots: int = 2, pressure: Callable[[], bool] | None = None) -> None:
        self.slots = slots
        self.pressure: Callable[[], bool] = pressure or (lambda: False)
        self._semaphore = asyncio.Semaphore(slots)
        self.deferred = 0
        self.batches = 0

    async def yield_to_clients(self) -> None:
        """Wait (bounded) while client requests queue for admission."""
        for _ in range(MAX_YIELDS):
            if not self.pressure():
                return
            self.deferred += 1
            await asyncio.sleep(YIELD_S)

    async def run(self, work: Callable[[], Any]) -> Any:
        """Run one bulk batch (`work()`, a value or an awaitable) in a slot."""
        async with self._semaphore:
            await self.yield_to_clients()
            self.batches += 1
            result = work()
            if isinstance(result, Awaitable):
                result = await result
            return result

    def wrap(self, handler: Callable[[bytes], Any]) -> Callable[[bytes], Awaitable[Any]]:
        """An RPC handler that serves its requests within the budget."""

        async def budgeted(body: bytes) -> Any:
            return await self.run(lambda: handler(body))

        return budgeted

    def stats(self) -> dict[str, int]:
        return {"slots": self.slots, "batches": self.batches, "deferred": self.deferred}
