"""Copying the ring record between nodes: by gossip, and directly when a step cannot wait.

`RecordGossip` is the gossip state machine with the whole record, transition included, in
place of the bare ring: the SYN carries the record's rank, and whichever side holds the
greater rank sends its record. `RecordExchange` copies the record to peers directly over the
RPC (kind RING_RECORD), when a transition step cannot wait for gossip: push to every node,
pull from them, or both; and, before a cleanup, push it and wait until each node has finished
the requests it began under the record before (kind DRAIN, limedb.cluster.inflight). Both
hand what they receive to this node's `RingKeeper`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping

import orjson

from limedb.cluster import rpc
from limedb.cluster.gossip import GossipError, GossipState
from limedb.cluster.inflight import InFlight
from limedb.cluster.membership import Membership
from limedb.cluster.ring.keeper import RingKeeper

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 5
# DRAIN carries [u32 how long the node may wait, ms][the record]; the reply is one byte.
DRAIN_HEAD = struct.Struct("!I")
DRAINED, NOT_DRAINED = b"\x01", b"\x00"
MAX_DRAIN_WAIT_S = 60.0


class RecordGossip(GossipState):
    """Gossip whose ring record is the whole RingRecord (ring, RF and transition)."""

    keeper: RingKeeper

    @classmethod
    def replacing(cls, gossip: GossipState, keeper: RingKeeper) -> RecordGossip:
        """Take over an existing GossipState (its heartbeats and hooks) in place.

        Membership builds its own GossipState; copying its fields keeps the hooks it
        installed without membership having to know about ring records.
        """
        new = cls.__new__(cls)
        new.__dict__.update(gossip.__dict__)
        new.keeper = keeper
        return new

    def _ring_digest(self) -> dict | None:
        return None if self.keeper.state is None else {"rank": self.keeper.rank()}

    def _their_state_rank(self, theirs: object) -> list[int] | None:
        if theirs is None:
            return None
        if not isinstance(theirs, Mapping) or not isinstance(theirs.get("rank"), list):
            raise GossipError("ring digest must carry the record's rank")
        return theirs["rank"]

    def _ring_is_newer_than(self, theirs: object) -> bool:
        rank = self._their_state_rank(theirs)
        if self.keeper.state is None:
            return False
        return rank is None or self.keeper.rank() > rank

    def _wants_their_ring(self, theirs: object) -> bool:
        rank = self._their_state_rank(theirs)
        return rank is not None and rank > self.keeper.rank()

    def _apply_ring(self, record: object) -> None:
        if record is None:
            return
        try:
            self.keeper.adopt_record(record)
        except ValueError as exc:
            raise GossipError(f"bad ring record: {exc}") from exc

    def _full(self, reply: dict) -> dict:
        if reply.get("ring") is not None and self.keeper.state is not None:
            reply["ring"] = self.keeper.state.to_record()
        return reply

    def on_syn(self, msg: object) -> dict:
        return self._full(super().on_syn(msg))

    def on_ack(self, msg: object) -> dict:
        return self._full(super().on_ack(msg))


class RecordExchange:
    """Copies this node's ring record to its peers and theirs to it (RPC kind RING_RECORD:
    a body is a record to adopt if newer; an empty body asks for the peer's record; kind
    DRAIN: adopt the body, then answer once the requests begun before it have finished).
    `inflight` counts this node's coordinated requests (None: it coordinates none)."""

    def __init__(
        self,
        node_id: str,
        keeper: RingKeeper,
        membership: Membership,
        call: rpc.Call,
        inflight: InFlight | None = None,
    ) -> None:
        self.node_id = node_id
        self.keeper = keeper
        self.membership = membership
        self.call = call
        self.inflight = inflight

    def is_alive(self, node_id: str) -> bool:
        return node_id == self.node_id or self.membership.is_alive(node_id)

    def _record(self) -> bytes:
        state = self.keeper.state
        assert state is not None
        return orjson.dumps(state.to_record())

    async def push(self, node_id: str, record: bytes | None = None, timeout_s: float = 2.0) -> bool:
        """Send our record (or `record`) to `node_id`; whether it took it in."""
        try:
            await self.call(node_id, rpc.RING_RECORD, record or self._record(), timeout_s)
            return True
        except (rpc.PeerUnavailable, rpc.RpcError) as exc:
            log.debug("push of the ring record to %s failed: %s", node_id, exc)
            return False

    async def _pull(self, node_id: str, timeout_s: float) -> bool:
        try:
            reply = await self.call(node_id, rpc.RING_RECORD, b"", timeout_s)
            if reply:
                self.keeper.adopt_record(orjson.loads(reply))
            return True
        except (rpc.PeerUnavailable, rpc.RpcError, ValueError) as exc:
            log.debug("ring record pull from %s failed: %s", node_id, exc)
            return False
        except OSError as exc:
            # A record this node cannot persist (its disk is full) is not adopted: the node
            # keeps serving by the one it has, and gossip brings the newer one again. (The
            # nemesis, seed 7, found a node restarted onto a full disk dying here at start.)
            log.warning("ring record from %s not adopted: cannot persist it: %s", node_id, exc)
            return False

    async def exchange(self, timeout_s: float = 2.0) -> None:
        """Push our record to every node, then pull theirs and keep the newest (every node,
        whatever its liveness here: a rival proposer is exactly a node we may disagree with
        about liveness). Each push and pull is bounded by `timeout_s`, and a failed node is
        retried once while it is alive here, so a dead one costs one refused connection and a
        stalled one a few seconds at most."""
        record = self._record()

        async def exchange(node: str) -> bool:
            return await self.push(node, record, timeout_s) and await self._pull(node, timeout_s)

        if unconfirmed := await self._on_every_node(exchange, attempts=2):
            log.warning("ring record exchange unconfirmed by %s", ", ".join(unconfirmed))

    async def push_everywhere(self) -> None:
        """Push the record to every node it names (and every node gossip knows); wait until
        each live one has it, so that no coordinator routes by an older phase."""
        record = self._record()
        unconfirmed = await self._on_every_node(
            lambda node: self.push(node, record), attempts=PUSH_ATTEMPTS
        )
        if unconfirmed:
            log.warning(
                "ring record not confirmed by %s; gossip will carry it", ", ".join(unconfirmed)
            )

    async def drain_everywhere(self, timeout_s: float) -> list[str]:
        """Push the record to every node (once each, in the DRAIN itself), and wait until each has
        finished the reads and writes it began before it had this record, here too. Each
        node waits at most `timeout_s` (a request's own deadline bounds it). Returns the
        nodes that did not confirm: unreachable, not drained in time, or of a version
        without DRAIN."""
        body = DRAIN_HEAD.pack(int(timeout_s * 1000)) + self._record()

        async def drain(node: str) -> bool:
            try:
                reply = await self.call(node, rpc.DRAIN, body, timeout_s + 1.0)
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                log.debug("drain of %s failed: %s", node, exc)
                return False
            return reply == DRAINED

        here, unconfirmed = await asyncio.gather(
            self.drain_here(timeout_s), self._on_every_node(drain, attempts=1)
        )
        return unconfirmed if here else [self.node_id, *unconfirmed]

    async def drain_here(self, timeout_s: float) -> bool:
        """Whether every request this node began before now finished within `timeout_s`."""
        if self.inflight is None:
            return True
        return await self.inflight.drained(self.inflight.advance(), timeout_s)

    async def _on_every_node(
        self, action: Callable[[str], Awaitable[bool]], attempts: int
    ) -> list[str]:
        """Run `action` on every node the record or gossip names but this one, in parallel; a
        node it failed on is tried again (up to `attempts` in all, a little later each time)
        while it is alive here. Returns the nodes it never succeeded on."""
        state = self.keeper.state
        assert state is not None
        pending = sorted(
            (set(state.all_members()) | set(self.membership.peer_ids())) - {self.node_id}
        )
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(0.2 * attempt)
            done = await asyncio.gather(*(action(n) for n in pending))
            pending = [
                n for n, ok in zip(pending, done, strict=True) if not ok and self.is_alive(n)
            ]
            if not pending:
                break
        return pending

    async def pull_from(self, nodes: list[str], timeout_s: float = 1.0) -> None:
        """Ask `nodes` for their ring record and keep the newest (a restarted node must not
        route by the record it had before it went down)."""
        await asyncio.gather(*(self._pull(n, timeout_s) for n in nodes if n != self.node_id))

    def handle(self, body: bytes) -> bytes:
        """RING_RECORD: adopt a pushed record if newer; an empty body asks for ours."""
        if body:
            try:
                self.keeper.adopt_record(orjson.loads(body))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise rpc.RpcError(400, f"bad ring record: {exc}") from exc
            return b""
        state = self.keeper.state
        return b"" if state is None else orjson.dumps(state.to_record())

    async def handle_drain(self, body: bytes) -> bytes:
        """DRAIN: adopt the record in `body`, then wait (as long as the caller said, at most
        MAX_DRAIN_WAIT_S) for the requests begun before it; DRAINED, or NOT_DRAINED if some
        outlived the wait."""
        if len(body) <= DRAIN_HEAD.size:
            raise rpc.RpcError(400, "DRAIN carries a wait and a ring record")
        (wait_ms,) = DRAIN_HEAD.unpack_from(body)
        try:
            self.handle(body[DRAIN_HEAD.size :])
        except OSError as exc:
            # Not persisted (a full disk): the node still routes by its older record.
            raise rpc.RpcError(rpc.UNAVAILABLE, f"ring record not adopted: {exc}") from exc
        wait_s = min(wait_ms / 1000, MAX_DRAIN_WAIT_S)
        return DRAINED if await self.drain_here(wait_s) else NOT_DRAINED
