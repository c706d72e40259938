"""This node's copy of the ring record: adopt newer copies, persist them, gossip them.

`RingKeeper` holds the newest `RingState` this node knows. Every newer copy, whether made
here (a transition step) or brought in by gossip or a direct push, is persisted before it is
acted on, then installed as the membership's ring when its committed ring changed, and then
announced to listeners (the transition driver wakes up). `RecordGossip` is the gossip state
machine with the whole record, transition included, in place of the bare ring: the SYN
carries the record's rank, and whichever side holds the greater rank sends its record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from limedb.cluster.gossip import GossipError, GossipState
from limedb.cluster.membership import Membership
from limedb.cluster.ring_state import RingState
from limedb.cluster.ring_store import RingStore
from limedb.cluster.service import Unavailable
from limedb.cluster.transitions import WriteSet

log = logging.getLogger(__name__)

StateListener = Callable[[RingState], object]


class RingKeeper:
    """The newest ring record known here; also the coordinator's routing."""

    def __init__(
        self, membership: Membership, store: RingStore | None, state: RingState | None
    ) -> None:
        self.membership = membership
        self.store = store
        self.state = state
        self._listeners: list[StateListener] = []

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def rank(self) -> list[int]:
        return [] if self.state is None else self.state.rank()

    def adopt(self, state: RingState) -> bool:
        """Take `state` if it is newer than ours; returns whether it was taken."""
        if not state.newer_than(self.state):
            return False
        if self.store is not None:
            self.store.save(state)
        old = self.state
        self.state = state
        if old is None or state.ring != old.ring:
            GossipState.adopt_ring(self.membership.gossip, state.ring)
        t, before = state.transition, old.transition if old is not None else None
        if t is not None and (before is None or before.id != t.id):
            log.info("transition %s: %s (%s)", t.id, t.change.describe(), t.phase.value)
        elif t is not None and before is not None and before.phase != t.phase:
            log.info("transition %s is now %s", t.id, t.phase.value)
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:
                log.exception("ring record listener failed")
        return True

    def adopt_record(self, record: object) -> bool:
        if not isinstance(record, Mapping):
            raise ValueError("ring record must be an object")
        return self.adopt(RingState.from_record(record))

    # ------------------------------------------------------------------ routing

    def _routing(self) -> RingState:
        state = self.state
        if state is None:
            raise Unavailable("this node has not learned the ring yet", retry_after=1.0)
        return state

    def write_set(self, key: bytes) -> WriteSet:
        return self._routing().write_set(key)

    def read_replicas(self, key: bytes) -> tuple[str, ...]:
        return self._routing().read_replicas(key)


class RecordGossip(GossipState):
    """Gossip whose ring record is the whole RingState (ring, RF and transition)."""

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
