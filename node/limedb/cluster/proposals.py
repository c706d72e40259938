"""Proposes ring changes through one node at a time, so that an accepted change is the one that runs.

Any node takes a change (`POST /admin/join|leave|replace|replication-factor`) and forwards it
(RPC `PROPOSE`) to the proposer: the first live node id among the committed ring's members, or,
while a transition runs, the node driving it (`TransitionDriver.driver_of`). The proposer
proposes it on its own event loop, where `TransitionDriver.propose` is synchronous, so of two
changes asked at the same moment the second finds the first running and is refused with its id.

Two nodes can still disagree about who the proposer is (liveness is each node's own view; the
lowest one may have just died or come back). So before accepting, the proposer pushes the record
it adopted to every node the record or gossip names and then pulls theirs, keeping the newest
(`RecordExchange.exchange` in limedb.cluster.ring.exchange). Two rival proposals of the same
epoch thus both reach both proposers (whichever proposed second was either refused, having
received the first, or holds its own when the first one's pull arrives), the record order
picks the same winner on both, and only the proposer whose transition is still the current one answers 202; the other
answers 409 naming the winner. Only proposers that cannot reach each other within the exchange
(a partition, or a node stalled for seconds yet alive) can both answer 202; the record order
still makes one transition win everywhere once they do (the driver exchanges records again
before streaming, and what a superseded transition streamed is cleaned up once the winner
finishes).
For the same reason a node whose proposer does not answer proposes the change itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from limedb.cluster import rpc
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.transitions import Change, Transition, TransitionRefused

if TYPE_CHECKING:
    from limedb.cluster.transition_driver import TransitionDriver

log = logging.getLogger(__name__)

# A newly started node becomes alive in the proposer's gossip within a round or two.
NEWCOMER_WAIT_S = 5.0
# Covers the newcomer wait and the record exchange (at most two tries of a push and a pull per
# node, 2 s each, in parallel).
PROPOSE_TIMEOUT_S = 15.0


class ProposerUnavailable(Exception):
    """No ring member is alive as this node (not a member itself) sees it: retry later."""


@dataclass(frozen=True)
class Proposal:
    """The proposer's answer: the transition that runs (`accepted`, its status) or why not."""

    accepted: bool
    transition: dict | None = None
    error: str = ""
    running_id: str | None = None

    @classmethod
    def refused(cls, error: str, running_id: str | None = None) -> Proposal:
        return cls(False, error=error, running_id=running_id)

    def to_record(self) -> dict:
        return {
            "accepted": self.accepted,
            "transition": self.transition,
            "error": self.error,
            "running_transition": self.running_id,
        }

    @classmethod
    def from_record(cls, record: Mapping) -> Proposal:
        return cls(
            bool(record["accepted"]),
            record.get("transition"),
            str(record.get("error", "")),
            record.get("running_transition"),
        )


class Proposals:
    """This node's side of proposing: forwards a change to the proposer, or is the proposer."""

    def __init__(self, driver: TransitionDriver) -> None:
        self.driver = driver

    def proposer(self, state: RingRecord) -> str | None:
        """The node that proposes changes to `state`, as this node sees liveness."""
        d = self.driver
        running = state.active
        if running is not None:
            # Every change but a retry of the running one is refused; its driver knows best.
            return d.driver_of(running)
        return next((n for n in sorted(state.ring.members) if d.is_alive(n)), None)

    async def submit(self, change: Change) -> Proposal:
        """Propose `change` through the proposer and return its answer."""
        d = self.driver
        state = d.keeper.state
        if state is None:
            return Proposal.refused("this node has not learned the ring yet; ask a ring member")
        proposer = self.proposer(state)
        if proposer is None:
            raise ProposerUnavailable("no ring member is alive as this node sees it")
        if proposer == d.node_id:
            return await self.propose_here(change)
        body = orjson.dumps(change.to_record())
        try:
            reply = await d.call(proposer, rpc.PROPOSE, body, PROPOSE_TIMEOUT_S)
        except (rpc.PeerUnavailable, rpc.RpcError) as exc:
            # It died a moment ago (not yet judged dead here), or runs a version without
            # PROPOSE: proposing here is still safe, the record exchange settles any rival
            # (the proposer's own copy of this change included: the same change is accepted).
            log.info("proposer %s unreachable (%s); proposing here", proposer, exc)
            return await self.propose_here(change)
        return Proposal.from_record(orjson.loads(reply))

    async def handle(self, body: bytes) -> bytes:
        """PROPOSE: a change forwarded by another node; proposed here whoever this node thinks
        the proposer is (forwarding again could loop while two nodes disagree)."""
        try:
            change = Change.from_record(orjson.loads(body))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise rpc.RpcError(400, f"bad change: {exc!r}") from exc
        return orjson.dumps((await self.propose_here(change)).to_record())

    async def propose_here(self, change: Change) -> Proposal:
        d = self.driver
        if change.url:
            newcomer = change.new_node_id or change.node_id
            loop = asyncio.get_running_loop()
            deadline = loop.time() + NEWCOMER_WAIT_S
            while not d.is_alive(newcomer) and loop.time() < deadline:
                await asyncio.sleep(0.2)
        try:
            t = d.propose(change)
        except TransitionRefused as exc:
            state = d.keeper.state
            running = state.active if state is not None else None
            if running is None or running.change != change:
                return Proposal.refused(str(exc), exc.running_id)
            # The same request again (a client retrying after a timeout, an operator's
            # reconcile loop): it is running, which is what was asked.
            t = running
        await d.records.exchange()
        return self._verdict(t)

    def _verdict(self, t: Transition) -> Proposal:
        """Accept `t` if the record still holds it after the exchange, else name the winner."""
        d = self.driver
        state = d.keeper.state
        now = state.transition if state is not None else None
        if now is not None and (now.id == t.id or (now.active and now.change == t.change)):
            return Proposal(True, d.transition_status(now))
        if now is None:  # cannot happen: records only move forward
            return Proposal.refused(f"transition {t.id} is no longer in the ring record")
        log.info("proposal %s lost to %s, proposed at the same time elsewhere", t.id, now.id)
        return Proposal.refused(
            f"transition {now.id} ({now.change.describe()}) was proposed at the same time "
            f"through another node and won over {t.id} ({t.change.describe()}); retry once it "
            f"has finished",
            running_id=now.id,
        )
