"""Two ring changes asked of two different nodes at the same instant: exactly one is accepted
(202) and runs to the end, the other is refused (409) naming it; also when the two nodes each
believe they are the proposer (their liveness views disagree), which the record exchange
before the answer settles. A change asked while the proposer has just died still runs, and
one proposed after a rollback outranks the rolled-back transition of the same epoch."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from limedb.client import AsyncClient, Refused
from limedb.cluster import rpc
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.transitions import Change, propose
from support.cluster import SECRET, Node, wait_for
from support.history import History
from support.transitions import Fleet, preload

# Holding each transition in cleanup for a second keeps it running well past the moment the
# second of two simultaneous requests reaches the proposer, even on a busy machine.
ENV = {"LIMEDB_VNODES": "16", "LIMEDB_CLEANUP_HOLD_MS": "1000"}


async def _ask_both(first: tuple[Node, str, object], second: tuple[Node, str, object]) -> list:
    """Both admin requests at once; each result is the 202 body or the Refused raised."""

    async def ask(node: Node, method: str, arg: object) -> dict | Refused:
        async with AsyncClient(node.url, timeout=30.0, retries=0, cluster_secret=SECRET) as client:
            try:
                return await getattr(client, method)(arg)
            except Refused as refused:
                return refused

    return await asyncio.gather(ask(*first), ask(*second))


def _one_winner(results: list) -> str:
    """Exactly one 202 and one 409 naming the accepted transition; returns its id."""
    accepted = [r["transition"]["id"] for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(accepted) == 1 and len(refused) == 1, results
    assert refused[0].running_transition == accepted[0], (str(refused[0]), accepted[0])
    return accepted[0]


def _seen_alive_by_every_member(fleet: Fleet, nodes: list[Node]) -> None:
    """Wait until gossip on every member holds `nodes` alive, so that neither join request
    waits for its newcomer (the two must reach the proposer at the same moment)."""

    def alive() -> bool:
        for member in fleet.members:
            body = fleet.http.get(f"{member.url}/api/v1/cluster/gossip").json()
            active = {p["url"] for p in body["peer_details"] if p["status"] == "active"}
            if not {n.url for n in nodes} <= active:
                return False
        return True

    wait_for(alive, 30.0, "every member to see the joiners alive", 0.1)


def _finishes_everywhere(fleet: Fleet, tid: str) -> None:
    last = fleet.wait_transition(tid)
    assert last["phase"] == "done", last
    fleet.wait_converged()
    for node in fleet.members:
        assert fleet.status(node)["last_transition"]["id"] == tid


@pytest.mark.cluster
def test_two_changes_asked_of_two_nodes_at_once_run_one_and_refuse_the_other_naming_it(
    fleet: Fleet,
):
    history = History()
    a, b, c = fleet.bootstrap(3)
    preload(fleet, history, 300)
    d, e = fleet.start_joiner(), fleet.start_joiner()
    _seen_alive_by_every_member(fleet, [d, e])

    tid = _one_winner(asyncio.run(_ask_both((b, "join", d.url), (c, "join", e.url))))
    _finishes_everywhere(fleet, tid)
    joined = fleet.status()["last_transition"]["node"]
    assert joined in (d.url, e.url)
    fleet.members.append(d if joined == d.url else e)

    rf = 3
    # Asked of two non-proposers, of the proposer and another node, in either order.
    for first, second in [(c, b), (a, c), (b, a), (c, b)]:
        one, other = sorted({1, 2, 3} - {rf})
        tid = _one_winner(
            asyncio.run(
                _ask_both(
                    (first, "set_replication_factor", one),
                    (second, "set_replication_factor", other),
                )
            )
        )
        _finishes_everywhere(fleet, tid)
        rf = fleet.status()["replication_factor"]
        assert rf in (one, other)
    fleet.check(history)


async def _propose_at(node: Node, rf: int) -> dict:
    """A PROPOSE frame straight to `node`, as a node forwards a change to whom it believes is
    the proposer: `node` proposes it itself."""
    client = rpc.RpcClient(SECRET)
    try:
        body = orjson.dumps({"kind": "set_rf", "rf": rf})
        reply = await client.call(node.host, node.internal_port, rpc.PROPOSE, body, 30.0)
        return orjson.loads(reply)
    finally:
        client.close()


@pytest.mark.cluster
def test_two_nodes_that_each_take_themselves_for_the_proposer_still_accept_only_one(
    fleet: Fleet,
):
    a, b, c = fleet.bootstrap(3)
    rf = 3
    for first, second in [(b, c), (c, a), (a, b), (b, c), (c, b)]:
        one, other = sorted({1, 2, 3} - {rf})

        async def both() -> list[dict]:
            return list(await asyncio.gather(_propose_at(first, one), _propose_at(second, other)))  # noqa: B023

        answers = asyncio.run(both())
        accepted = [x["transition"]["id"] for x in answers if x["accepted"]]
        refused = [x for x in answers if not x["accepted"]]
        assert len(accepted) == 1 and len(refused) == 1, answers
        assert refused[0]["running_transition"] == accepted[0], answers
        _finishes_everywhere(fleet, accepted[0])
        rf = fleet.status()["replication_factor"]
        assert rf in (one, other)


@pytest.mark.cluster
def test_a_change_asked_right_after_the_proposer_died_is_proposed_by_the_node_asked(
    fleet: Fleet,
):
    a, b, c = fleet.bootstrap(3)
    a.kill()  # the proposer; b still holds it alive for a few seconds
    with fleet.admin(b) as client:
        tid = client.set_replication_factor(2)["transition"]["id"]
    fleet.members = [b, c]
    _finishes_everywhere(fleet, tid)
    assert fleet.status(c)["replication_factor"] == 2


def test_a_change_proposed_after_a_rollback_outranks_the_rolled_back_transition():
    """Both propose the same epoch (a rollback leaves the committed ring where it was); the
    record order must keep the later one, whatever the two random ids hash to."""
    ring = Ring({f"n{i}": f"http://n{i}" for i in range(3)}, vnodes=4)
    for attempt in range(32):
        start = 1_000 * attempt
        first = propose(ring, 3, Change.set_rf(2), now_ms=start)
        rolled = RingRecord(ring, 3).with_transition(
            first.begin_streaming(start + 1).roll_back("target unreachable", start + 2)
        )
        again = propose(ring, 3, Change.set_rf(1), now_ms=start + 3, running=rolled.transition)
        assert again.new_ring.epoch == first.new_ring.epoch
        assert rolled.with_transition(again).newer_than(rolled), attempt
