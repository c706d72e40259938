"""Pure status of a LimeCluster: phase, members, migration, conditions and the last
verification from one decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from limedb_operator import verification
from limedb_operator.manifests import pod_of_node, selector_string
from limedb_operator.scaling import CREDENTIALS_REJECTED, NORMAL, Decision, Observed, Step

CONDITION_TYPES = (
    "Available",
    "Progressing",
    "Degraded",
    "ScalingUp",
    "ScalingDown",
    "Rebalancing",
    "Valid",
    "VolumesResized",  # volumes.condition(), added by the reconcile once the StatefulSet exists
    "Restored",  # restoring.condition(), with spec.restoreFrom
    "Replacing",  # replacement.condition(), added by the reconcile
    "Upgrading",  # rolling.condition(), once the StatefulSet exists
)


def _cond(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def conditions_for(obs: Observed, decision: Decision, ready_members: int) -> list[dict[str, Any]]:
    step = decision.step
    ring = obs.ring
    moving = ring is not None and ring.transition is not None
    converged = step.kind == "done"
    replicas = obs.replicas or 0
    quorum = obs.replication_factor // 2 + 1
    available = ring is not None and ready_members >= min(quorum, max(replicas, 1))
    ready_pods = sum(1 for p in obs.pods if p.ready and p.ordinal < replicas)
    # While pods are being created or scaled, "not Ready yet" is progress, not degradation.
    settled = decision.scaling is None and step.kind != "create"
    degraded = settled and (
        ready_pods < replicas or (ring is not None and ready_members < replicas)
    )
    move_msg = step.message if moving else ""
    return [
        _cond(
            "Available",
            available,
            "QuorumReady" if available else "QuorumNotReady",
            f"{ready_members} of {replicas} nodes Ready and Normal",
        ),
        _cond("Progressing", not converged, step.reason, step.message),
        _cond(
            "Degraded",
            degraded,
            "NodesNotReady" if degraded else "AllNodesReady" if settled else "Settling",
            f"{ready_pods} of {replicas} pods Ready" if degraded else "",
        ),
        _cond(
            "ScalingUp",
            decision.scaling == "up",
            step.reason if decision.scaling == "up" else "Idle",
        ),
        _cond(
            "ScalingDown",
            decision.scaling == "down",
            step.reason if decision.scaling == "down" else "Idle",
        ),
        _cond("Rebalancing", moving, "Migrating" if moving else "Idle", move_msg),
        _cond(
            "Valid",
            decision.valid,
            decision.invalid_reason or "SpecValid",
            decision.invalid_message,
        ),
    ]


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """New conditions keeping lastTransitionTime when the status did not flip."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"])
        changed = prev is None or prev.get("status") != c["status"]
        stamp = now if changed else prev.get("lastTransitionTime", now)
        item = {**c, "lastTransitionTime": stamp}
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def flipped(old: Sequence[Mapping[str, Any]] | None, kind: str, status: str) -> bool:
    """True when condition `kind` becomes `status` now (for one event per change, not a flood)."""
    prev = next((c for c in old or [] if c.get("type") == kind), None)
    return prev is None or prev.get("status") != status


def credentials_event(
    old: Sequence[Mapping[str, Any]] | None, step: Step
) -> tuple[str, str, str] | None:
    """A Warning event when the nodes start refusing the operator's admin credentials (the
    Progressing condition takes that reason now): once, not every tick while it lasts."""
    if step.reason != CREDENTIALS_REJECTED:
        return None
    prev = next((c for c in old or [] if c.get("type") == "Progressing"), None)
    if prev is not None and prev.get("reason") == CREDENTIALS_REJECTED:
        return None
    return ("Warning", CREDENTIALS_REJECTED, step.message)


def phase_for(obs: Observed, decision: Decision) -> str:
    step = decision.step
    if not decision.valid and step.kind in ("wait", "done") and decision.scaling is None:
        return "Invalid"
    if step.kind == "create":
        return "Creating"
    if decision.rolling:
        return "Upgrading"
    if obs.ring is not None and obs.ring.transition is not None:
        return "Replacing" if obs.ring.transition.kind == "replace" else "Rebalancing"
    if decision.scaling == "up":
        return "ScalingUp"
    if decision.scaling == "down":
        return "ScalingDown"
    if step.kind == "done":
        return "Running" if step.reason == "Converged" else "Degraded"
    if obs.ring is None:
        return "Pending"
    return "Degraded"


def build_status(
    obs: Observed,
    decision: Decision,
    old_status: Mapping[str, Any] | None,
    now: str,
    generation: int | None,
    extra_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    old_status = old_status or {}
    ring = obs.ring
    pods = {p.name: p for p in obs.pods}
    members: list[dict[str, Any]] = []
    ready_members = 0
    if ring is not None:
        for m in ring.members:
            pod_name = pod_of_node(m.node_id)
            members.append({"pod": pod_name, "nodeId": m.node_id, "state": m.state})
            pod = pods.get(pod_name)
            if m.state == NORMAL and pod is not None and pod.ready:
                ready_members += 1
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "nodes": obs.replicas or 0,
        "readyNodes": ready_members,
        "selector": selector_string(obs.name),
        "phase": phase_for(obs, decision),
        "members": members,
        "conditions": merge_conditions(
            old_status.get("conditions"),
            [*conditions_for(obs, decision, ready_members), *map(dict, extra_conditions)],
            now,
            generation,
        ),
    }
    if ring is not None:
        status["ringEpoch"] = ring.epoch
    last = verification.published(
        ring.verification if ring is not None else None, old_status.get("lastVerification")
    )
    if last is not None:
        status["lastVerification"] = last
    if ring is not None and ring.transition is not None:
        t = ring.transition
        prev = old_status.get("migration") or {}
        started = t.started_at or (prev.get("startedAt") if prev.get("node") == t.node else None)
        status["migration"] = {
            "kind": t.kind,
            "node": t.node,
            "phase": t.phase,
            "rangesMoved": t.ranges_moved,
            "rangesTotal": t.ranges_total,
            "startedAt": started or now,
        }
    else:
        # Merge-patching None removes the field: no stale progress once the move is over.
        status["migration"] = None
    return status
