"""Whether a node that starts on an empty data dir is a member whose data is gone.

A pod whose volume was lost comes back under the identity the ring still lists. Serving as
that member would answer reads from nothing, and its "not found" would hide acknowledged
writes. Before it gossips, such a node asks its seeds (RPC REJOIN) for their ring record and
whether they heard from this identity before this process started (`heard_before`); `decide`
reads the answers: a listed member that was heard before is REPLACE (the node refuses replica
reads and asks the survivors to replace it, the existing `admin replace` path with the same id
and URL), anything else starts as it always did. Nobody has heard from a late founder of a new
cluster, so it is not mistaken for a lost member. A seed that restarted since the member went
down has forgotten it: the node then starts as before (a known limit, docs/transitions.md).

The decisions are pure; `limedb.cluster.node` does the RPC and the proposing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import orjson

from limedb.cluster.ring.record import RingRecord
from limedb.cluster.transitions import Kind, Phase


class StartMode(enum.StrEnum):
    RESUME = "resume"  # a clustered node used the data dir before (hints/, ring.json) or it
    # holds data: carry on from it
    FRESH = "fresh"  # a new node: the static ring, or wait to be joined
    REPLACE = "replace"  # a listed member that lost its data: be replaced (also again after a
    # restart before that replace committed: limedb.cluster.replace_pending)


@dataclass(frozen=True, slots=True)
class SeedAnswer:
    """One seed's REJOIN reply: its ring record and whether it heard the node before."""

    record: RingRecord | None
    heard_before: bool

    def to_wire(self) -> bytes:
        record = self.record.to_record() if self.record is not None else None
        return orjson.dumps({"record": record, "heard_before": self.heard_before})

    @classmethod
    def from_wire(cls, body: bytes) -> SeedAnswer:
        data = orjson.loads(body)
        record = data.get("record")
        return cls(
            RingRecord.from_record(record) if record is not None else None,
            bool(data.get("heard_before")),
        )


def encode_question(node_id: str, generation: int) -> bytes:
    return orjson.dumps({"node_id": node_id, "generation": generation})


def decode_question(body: bytes) -> tuple[str, int]:
    data = orjson.loads(body)
    node_id, generation = data["node_id"], data["generation"]
    if not isinstance(node_id, str) or type(generation) is not int:
        raise ValueError("REJOIN needs a node_id string and an integer generation")
    return node_id, generation


def heard_before(first_generation: int | None, asking_generation: int) -> bool:
    """Whether a seed heard `node_id` in an earlier run than the one asking: the generation it
    first heard is older (a seed that only heard this run, e.g. its gossip reached the asking
    node first, has not)."""
    return first_generation is not None and first_generation < asking_generation


def newest_record(answers: Iterable[SeedAnswer]) -> RingRecord | None:
    newest: RingRecord | None = None
    for answer in answers:
        if answer.record is not None and answer.record.newer_than(newest):
            newest = answer.record
    return newest


def decide(
    node_id: str,
    *,
    has_local_record: bool,
    has_local_data: bool,
    answers: Collection[SeedAnswer],
    auto_replace: bool = True,
    replace_pending: bool = False,
) -> StartMode:
    """How a node starts, from its own data dir and its seeds' answers. A self-replace decided
    by an earlier run and not yet committed goes on, whatever the data dir holds by now (the
    ring record it adopted, the writes it took while waiting)."""
    if replace_pending:
        return StartMode.REPLACE
    if has_local_record or has_local_data:
        return StartMode.RESUME
    if not auto_replace:
        return StartMode.FRESH
    record = newest_record(answers)
    if record is None or node_id not in record.ring.members:
        return StartMode.FRESH
    if record.rf < 2:
        return StartMode.FRESH  # no other replica to stream from: a replace would be refused
    if not any(a.heard_before for a in answers):
        return StartMode.FRESH
    return StartMode.REPLACE


def replaced(record: RingRecord | None, node_id: str, earlier: Collection[str]) -> bool:
    """Whether a replace of `node_id` by itself, started after the transitions `earlier`, has
    committed: from then on reads route to this node again, and it holds its ranges."""
    t = record.transition if record is not None else None
    return (
        t is not None
        and t.id not in earlier
        and t.change.kind is Kind.REPLACE
        and t.change.new_node_id == node_id
        and t.phase in (Phase.COMMITTED, Phase.CLEANUP, Phase.DONE)
    )


def no_longer_a_member(record: RingRecord | None, node_id: str) -> bool:
    """Whether a self-replace still waited for has nothing left to replace: no transition runs
    and the ring no longer lists this node (it was removed meanwhile, e.g. a scale-down)."""
    return record is not None and record.active is None and node_id not in record.ring.members


def needs_proposal(record: RingRecord | None) -> bool:
    """Whether to (re)propose the self-replace: no transition runs (none yet, or ours rolled
    back); a running one is waited for."""
    return record is not None and record.active is None
