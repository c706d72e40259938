"""How a target's ranges are split into tables and who cuts them: every range once, in token
order, each table from a node holding all of its ranges, the cuts spread over the old replicas
(a leaving node hands off its own), and a worker's next table cut while the last one is pulled."""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import pairwise

from limedb.cluster import rpc
from limedb.cluster.ring.placement import Ring
from limedb.cluster.streaming import RateMeter, Throttle
from limedb.cluster.table_streamer import TABLES_PER_TARGET, TableStreamer, plan_groups, ramp_up
from limedb.cluster.table_streams import CUT_HEAD, CUT_REPLY, FETCH, FETCH_SHARED, INGESTED
from limedb.cluster.transitions import Change, Transition, propose

NODES = {f"n{i}": f"http://10.0.0.{i}:8484" for i in range(6)}


def ring_of(count: int) -> Ring:
    return Ring({f"n{i}": NODES[f"n{i}"] for i in range(count)}, 256, 7)


def join_of_a_fourth() -> Transition:
    return propose(ring_of(3), 3, Change.join("n3", NODES["n3"]), now_ms=0)


def check_cover(t: Transition, target: str, groups) -> None:
    indexes = t.streams()[target]
    assert [p for g in groups for p in g.positions] == list(range(len(indexes)))
    for group in groups:
        assert all(group.source in t.moves[indexes[p]].sources for p in group.positions)


def test_a_join_is_cut_into_about_sixteen_tables_spread_evenly_over_the_old_replicas():
    t = join_of_a_fourth()
    indexes = t.streams()["n3"]
    groups = plan_groups(t, indexes, list(range(len(indexes))), lambda node: True)
    check_cover(t, "n3", groups)
    assert TABLES_PER_TARGET <= len(groups) <= TABLES_PER_TARGET + 1
    ranges = Counter()
    for group in groups:
        ranges[group.source] += len(group.positions)
    biggest = max(len(g.positions) for g in groups)
    # Each old replica cuts a third, give or take one table (in ring order alone, the first
    # source of each group's first range, one of them cut half and another a fifth).
    assert set(ranges) == {"n0", "n1", "n2"}
    assert max(ranges.values()) - min(ranges.values()) <= biggest, ranges


def test_the_workers_first_tables_are_a_quarter_as_big_then_the_planned_ones_follow():
    t = join_of_a_fourth()
    indexes = t.streams()["n3"]
    planned = plan_groups(t, indexes, list(range(len(indexes))), lambda node: True)
    groups = ramp_up(planned, 4)
    check_cover(t, "n3", groups)
    # Each of the first four planned tables comes as four of a quarter of its ranges, from the
    # same source; the rest are as planned.
    assert groups[16:] == planned[4:]
    for i, group in enumerate(planned[:4]):
        parts = groups[4 * i : 4 * i + 4]
        assert [p for part in parts for p in part.positions] == group.positions
        assert {part.source for part in parts} == {group.source}
        assert max(len(part.positions) for part in parts) <= -(-len(group.positions) // 4)


def test_a_dead_replica_cuts_nothing_while_another_holds_the_range():
    t = join_of_a_fourth()
    indexes = t.streams()["n3"]
    groups = plan_groups(t, indexes, list(range(len(indexes))), lambda node: node != "n1")
    check_cover(t, "n3", groups)
    assert {g.source for g in groups} == {"n0", "n2"}


def test_a_leaving_node_cuts_every_table_of_ranges_it_holds():
    t = propose(ring_of(5), 3, Change.leave("n2"), now_ms=0)
    for target, indexes in t.streams().items():
        groups = plan_groups(t, indexes, list(range(len(indexes))), lambda node: True)
        check_cover(t, target, groups)
        for group in groups:
            holds = all("n2" in t.moves[indexes[p]].sources for p in group.positions)
            assert group.source == "n2" or not holds


class Driver:
    def is_alive(self, node_id: str) -> bool:
        return True

    def stalled(self, t: Transition, what: str, since_key: str) -> None:
        raise AssertionError(f"stalled on {what}")

    def reachable(self, *since_keys: str) -> None:
        pass


def test_a_workers_next_table_is_cut_while_its_last_one_is_pulled():
    """One worker, three tables: the second table's cut is asked for before the first
    table's pull answers, and every table is pulled once, in order."""
    t = join_of_a_fourth()
    indexes = t.streams()["n3"]
    positions = list(range(len(indexes)))
    log: list[tuple[str, int]] = []
    pulls: dict[int, asyncio.Future[bytes]] = {}

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()

        async def call(node: str, kind: int, payload: bytes, timeout: float) -> bytes:
            if kind == rpc.TABLE_CUT:
                tid = CUT_HEAD.unpack_from(payload)[0]
                log.append(("cut", tid))
                return CUT_REPLY.pack(10, 100, 7)
            if kind == rpc.TABLE_FETCH_SHARED:
                tid = FETCH_SHARED.unpack_from(payload)[0]
                log.append(("pull", tid))
                pulls[tid] = loop.create_future()

                def answer() -> None:
                    log.append(("pulled", tid))
                    pulls[tid].set_result(INGESTED.pack(10, 10))

                loop.call_later(0.05, answer)  # the pull takes a while; what happens meanwhile?
                return await pulls[tid]
            assert kind == rpc.TABLE_DROP
            return b""

        streamer = TableStreamer(
            "n9", None, call, Driver(), RateMeter(), chunk_bytes=1 << 20, parallel=1
        )
        sent: list[list[int]] = []
        left = await streamer.stream(
            t, "n3", positions[:60], {}, lambda g, k, b: sent.append(g), Throttle(0), 0.0
        )
        assert [p for g in sent for p in g] == positions[:60]
        return left

    assert asyncio.run(main()) == []
    cuts = [tid for what, tid in log if what == "cut"]
    assert [tid for what, tid in log if what == "pull"] == cuts  # each once, in order
    assert len(cuts) >= 3
    # Each table after the first was asked of its source before the table before it was in.
    for before, after in pairwise(cuts):
        assert log.index(("cut", after)) < log.index(("pulled", before)), log


def test_a_target_without_shared_pulls_gets_a_fixed_share_of_the_rate_per_pull():
    """A target of the version before answers NOT_FOUND to TABLE_FETCH_SHARED once; from then
    on each pull is a TABLE_FETCH paced at the rate divided by the workers."""
    t = join_of_a_fourth()
    positions = list(range(len(t.streams()["n3"])))[:20]
    kinds: list[tuple[int, int]] = []

    async def main() -> None:
        async def call(node: str, kind: int, payload: bytes, timeout: float) -> bytes:
            if kind == rpc.TABLE_CUT:
                return CUT_REPLY.pack(10, 100, 7)
            if kind == rpc.TABLE_FETCH_SHARED:
                kinds.append((kind, FETCH_SHARED.unpack_from(payload)[4]))
                raise rpc.RpcError(rpc.NOT_FOUND, "unknown request kind 46")
            if kind == rpc.TABLE_FETCH:
                kinds.append((kind, FETCH.unpack_from(payload)[4]))
                return INGESTED.pack(10, 10)
            return b""

        streamer = TableStreamer(
            "n9", None, call, Driver(), RateMeter(), chunk_bytes=1 << 20, parallel=4
        )
        await streamer.stream(t, "n3", positions, {}, lambda *a: None, Throttle(8_000_000), 0.0)

    asyncio.run(main())
    shared = [k for k in kinds if k[0] == rpc.TABLE_FETCH_SHARED]
    plain = [k for k in kinds if k[0] == rpc.TABLE_FETCH]
    assert shared and all(rate == 8_000_000 for _, rate in shared)
    assert len(shared) <= 4  # at most the workers' first pulls, at once
    assert len(plain) >= 5 and all(rate == 2_000_000 for _, rate in plain)
