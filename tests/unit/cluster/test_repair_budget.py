"""The background budget that streaming, repair and hint replay run in: bounded slots, a
bounded yield to queued client requests, never a stop."""

from __future__ import annotations

import asyncio

from limedb.cluster.background import MAX_YIELDS, YIELD_S, BackgroundBudget


def test_batches_run_at_once_without_client_pressure():
    async def main() -> None:
        budget = BackgroundBudget()
        assert await budget.run(lambda: 7) == 7
        assert await budget.run(lambda: asyncio.sleep(0, result=8)) == 8
        # Not one yield: without pressure nothing waits (counted, not timed).
        assert budget.stats() == {"slots": 2, "batches": 2, "deferred": 0}

    asyncio.run(main())


def test_under_client_pressure_a_batch_waits_but_still_runs():
    async def main() -> None:
        budget = BackgroundBudget(pressure=lambda: True)
        assert await budget.run(lambda: "done") == "done"
        # It yielded the bounded number of times, then ran anyway.
        assert budget.deferred == MAX_YIELDS and budget.batches == 1

    asyncio.run(main())


def test_pressure_ending_lets_waiting_batches_go_on():
    async def main() -> None:
        clients_waiting = [True]
        budget = BackgroundBudget(pressure=lambda: clients_waiting[0])
        batch = asyncio.ensure_future(budget.run(lambda: "done"))
        await asyncio.sleep(YIELD_S * 2)
        assert not batch.done()
        clients_waiting[0] = False
        assert await asyncio.wait_for(batch, YIELD_S * 3) == "done"

    asyncio.run(main())


def test_no_more_batches_than_slots_run_at_once():
    async def main() -> None:
        budget = BackgroundBudget(slots=2)
        running = peak = 0

        async def batch() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

        handler = budget.wrap(lambda body: batch())
        await asyncio.gather(*(handler(b"") for _ in range(8)))
        assert peak == 2 and budget.batches == 8

    asyncio.run(main())
