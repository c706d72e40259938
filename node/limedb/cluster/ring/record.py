"""The cluster's ring record: the committed ring, its replication factor and the transition.

This is the value every node persists (`store`) and copies to the others (`exchange`), and the one
the coordinator routes by: while a transition runs, writes go to the union of old and new
owners and reads to the owners the transition's phase says (limedb.cluster.transitions).
Two copies of the record are ordered the same way on every node (`rank`), so gossip converges
on the newest: a higher committed epoch first, then the newer transition (of two to the same
epoch, the one proposed later; of two copies of one, the later step), then a content hash
that only separates two drivers' conflicting copies of the same step.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import xxhash

from limedb.cluster.ring.placement import Ring
from limedb.cluster.transitions import PHASE_RANK, Phase, Transition, TransitionError, WriteSet

# The ring-record format this build writes and the newest it reads. A record without the field
# is format 1 (the first one). A node refuses a record of a newer format instead of guessing at
# it: a downgrade across formats stops at the first node (docs/kubernetes.md, upgrades).
RING_FORMAT = 1


class UnreadableFormat(ValueError):
    """A ring record of a format newer than this build reads."""


@dataclass(frozen=True)
class RingRecord:
    """Committed `ring` and `rf`, and the latest `transition` (running or finished), if any."""

    ring: Ring
    rf: int
    transition: Transition | None = None

    @property
    def active(self) -> Transition | None:
        """The running transition, or None."""
        t = self.transition
        return t if t is not None and t.active else None

    # ------------------------------------------------------------------ routing

    def write_set(self, key: bytes) -> WriteSet:
        t = self.active
        if t is not None:
            return t.write_set(key)
        replicas = self.ring.replicas(key, self.rf)
        return WriteSet(replicas, replicas)

    def read_replicas(self, key: bytes) -> tuple[str, ...]:
        t = self.active
        if t is not None:
            return t.read_replicas(key)
        return self.ring.replicas(key, self.rf)

    def url_of(self, node_id: str) -> str | None:
        url = self.ring.members.get(node_id)
        if url is None and self.transition is not None:
            url = self.transition.new_ring.members.get(node_id)
            if url is None:
                url = self.transition.old_ring.members.get(node_id)
        return url

    def all_members(self) -> dict[str, str]:
        """Every node the record names: the ring's, and both rings of a running transition."""
        members = dict(self.ring.members)
        t = self.active
        if t is not None:
            members.update(t.old_ring.members)
            members.update(t.new_ring.members)
        return members

    # ------------------------------------------------------------------ steps

    def with_transition(self, transition: Transition) -> RingRecord:
        """This record with `transition` stepped; a commit moves the committed ring and RF."""
        ring, rf = self.ring, self.rf
        if transition.phase in (Phase.COMMITTED, Phase.CLEANUP, Phase.DONE):
            ring, rf = transition.new_ring, transition.new_rf
        return RingRecord(ring, rf, transition)

    # ------------------------------------------------------------------ order

    @functools.cached_property
    def _hash(self) -> int:
        return xxhash.xxh64_intdigest(orjson.dumps(self.to_record(), option=orjson.OPT_SORT_KEYS))

    def rank(self) -> list[int]:
        """A total order, identical on every node: the greater rank is the newer record."""
        epoch, members, digest = self.ring.rank()
        t = self.transition
        if t is None:
            tail = [0, 0, 0, 0, 0]
        else:
            # Of two transitions to the same epoch, the later proposal: one proposed after a
            # rollback must outrank the rolled-back one (the driver proposes it later than it).
            tail = [
                t.new_ring.epoch,
                t.started_ms,
                xxhash.xxh64_intdigest(t.id.encode()),
                t.version,
                PHASE_RANK[t.phase],
            ]
        return [epoch, members, digest, self.rf, *tail, self._hash]

    def newer_than(self, other: RingRecord | None) -> bool:
        return other is None or self.rank() > other.rank()

    # ------------------------------------------------------------------ records

    def to_record(self) -> dict:
        return {
            "format": RING_FORMAT,
            **self.ring.to_record(),
            "rf": self.rf,
            "transition": None if self.transition is None else self.transition.to_record(),
        }

    @classmethod
    def from_record(cls, record: Mapping) -> RingRecord:
        """Raises ValueError for a record that does not decode (TransitionError included),
        UnreadableFormat for one of a newer format."""
        check_format(record)
        ring = Ring.from_record(record)
        try:
            rf = int(record["rf"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad ring record: rf: {exc!r}") from exc
        raw = record.get("transition")
        transition = None
        if raw is not None:
            if not isinstance(raw, Mapping):
                raise TransitionError("bad ring record: transition must be an object")
            transition = Transition.from_record(raw)
        return cls(ring, rf, transition)


def check_format(record: Mapping) -> None:
    """Raise UnreadableFormat unless this build reads the format of `record`."""
    raw = record.get("format", 1)
    if not isinstance(raw, int) or raw < 1:
        raise ValueError(f"bad ring record: format {raw!r}")
    if raw > RING_FORMAT:
        raise UnreadableFormat(
            f"ring record format {raw} is newer than this node reads ({RING_FORMAT}): "
            "refusing it (a downgrade across ring formats is not supported)"
        )
