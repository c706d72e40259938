"""What `GET /admin/status` shows of the ring record: members, RF, the transitions, as dicts.

Pure functions of the record and of what this node observes (its liveness verdicts, the rate
its stream workers measure, the clock), so the transition driver only drives: ClusterService's
`admin_status`, its cluster view and the proposer's answer (limedb.cluster.proposals) shape
their objects here.
"""

from __future__ import annotations

from collections.abc import Callable

from limedb import __version__
from limedb.cluster.ring.record import RING_FORMAT, RingRecord
from limedb.cluster.transitions import Phase, Transition

Liveness = Callable[[str], str]  # node id -> "alive" | "suspect" | "dead", as this node sees it


def announced() -> dict:
    """What every node says of itself in `GET /admin/status`: its version and the ring-record
    format it writes (and the newest it reads); the operator refuses a downgrade across formats
    by it."""
    return {"version": __version__, "ring_format": RING_FORMAT}


def member_states(record: RingRecord, liveness: Liveness) -> list[dict]:
    """Every member the record names with its state (Joining, Normal, Leaving; Left for the
    nodes the last finished transition removed) and this node's liveness verdict."""
    t = record.transition
    active = t is not None and t.active
    entries = []
    for node_id, url in sorted(record.all_members().items()):
        member_state = "Normal"
        if active and t is not None:
            joining = node_id not in t.old_ring or node_id in t.change.fresh
            leaving = node_id not in t.new_ring
            before_commit = t.phase in (Phase.PROPOSED, Phase.STREAMING)
            if joining and before_commit:
                member_state = "Joining"
            elif leaving:
                member_state = "Leaving"
        entries.append(_member(node_id, url, member_state, liveness))
    if t is not None and t.phase is Phase.DONE:
        for node_id, url in sorted(t.old_ring.members.items()):
            if node_id not in t.new_ring:
                entries.append(_member(node_id, url, "Left", liveness))
    return entries


def _member(node_id: str, url: str, member_state: str, liveness: Liveness) -> dict:
    return {"node_id": node_id, "url": url, "state": member_state, "liveness": liveness(node_id)}


def transition_status(
    t: Transition, now_ms: int, driver: str | None, streaming_bytes_per_s: float
) -> dict:
    """`t` with its progress; the rate is what this node's stream workers measure while it
    streams (the recorded average otherwise)."""
    summary = t.summary(now_ms)
    bytes_per_s = streaming_bytes_per_s if t.phase is Phase.STREAMING else summary.bytes_per_s
    return {
        **t.status(now_ms, summary),
        # The node the change is about (the new one of a replace), for the operator.
        "node": t.change.new_node_id or t.change.node_id or None,
        "driver": driver,
        "ranges_moved": summary.ranges_done,
        "ranges_total": summary.ranges_total,
        "keys_streamed": summary.keys,
        "bytes_streamed": summary.bytes,
        "rate": round(bytes_per_s, 1),
        "keys_per_s": round(summary.keys_per_s, 1),
        "fraction": round(summary.fraction, 4),
        "eta_s": summary.eta_s,
    }


def ring_status(
    record: RingRecord | None,
    node_id: str,
    liveness: Liveness,
    shape_transition: Callable[[Transition], dict],
) -> dict:
    """The object of `GET /admin/status` (and `limedb admin status --json`), repair aside."""
    if record is None:
        return {
            "epoch": 0,
            "node_id": node_id,
            "members": [],
            "replication_factor": None,
            "vnodes": None,
            "transition": None,
            "last_transition": None,
        }
    t = record.transition
    shaped = shape_transition(t) if t is not None else None  # once: it sums every range
    return {
        "epoch": record.ring.epoch,
        "node_id": node_id,
        "members": member_states(record, liveness),
        "replication_factor": record.rf,
        "vnodes": record.ring.vnodes,
        "transition": dict(shaped) if shaped is not None and t.active else None,
        "last_transition": shaped,
    }
