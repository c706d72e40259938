"""This node's copy of the ring record: adopt newer copies, persist them, route by them.

`RingKeeper` holds the newest `RingRecord` this node knows. Every newer copy, whether made
here (a transition step) or brought in by gossip or a direct push (limedb.cluster.ring.exchange),
is persisted (limedb.cluster.ring.store) before it is acted on, then installed as the
membership's ring when its committed ring changed, and then announced to listeners (the
transition driver wakes up). The coordinator routes by it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from limedb.cluster.gossip import GossipState
from limedb.cluster.membership import Membership
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.ring.store import RingStore
from limedb.cluster.service import Unavailable
from limedb.cluster.transitions import WriteSet

log = logging.getLogger(__name__)

StateListener = Callable[[RingRecord], object]


class RingKeeper:
    """The newest ring record known here; also the coordinator's routing."""

    def __init__(
        self, membership: Membership, store: RingStore | None, state: RingRecord | None
    ) -> None:
        self.membership = membership
        self.store = store
        self.state = state
        self._listeners: list[StateListener] = []

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def rank(self) -> list[int]:
        return [] if self.state is None else self.state.rank()

    def adopt(self, state: RingRecord) -> bool:
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
        return self.adopt(RingRecord.from_record(record))

    # ------------------------------------------------------------------ routing

    def _routing(self) -> RingRecord:
        state = self.state
        if state is None:
            raise Unavailable("this node has not learned the ring yet", retry_after=1.0)
        return state

    def settled_replicas(self, key: bytes) -> tuple[str, ...] | None:
        """The key's replicas when no transition runs (writes and reads then go to the same
        nodes), else None (ask `write_set` / `read_replicas`): the coordinator's usual
        placement in one call, asked for every operation."""
        state = self.state
        if state is None:
            raise Unavailable("this node has not learned the ring yet", retry_after=1.0)
        t = state.transition
        if t is not None and t.active:
            return None
        return state.ring.replicas(key, state.rf)

    def write_set(self, key: bytes) -> WriteSet:
        return self._routing().write_set(key)

    def read_replicas(self, key: bytes) -> tuple[str, ...]:
        return self._routing().read_replicas(key)
