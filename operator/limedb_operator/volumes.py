"""Pure volume expansion: which data claims must grow to storage.size, and what status says.

The StatefulSet's volumeClaimTemplates are immutable, so growing storage.size is carried out on
the claims themselves: every member's claim whose request is below the spec is patched to the
new size (PVC expansion; the CSI resizer and the kubelet do the rest when the StorageClass allows
it). The same rule, re-evaluated every reconcile, also grows the claim of a member created later
from the old template, so the StatefulSet is never deleted and recreated for this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from limedb_operator.manifests import claim_ordinal

CONDITION = "VolumesResized"


@dataclass(frozen=True)
class ClaimView:
    """What the operator reads of one PersistentVolumeClaim."""

    name: str
    requested: str | None  # spec.resources.requests.storage
    capacity: str | None = None  # status.capacity.storage; None while unbound
    bound: bool = False
    # status.conditions of the claim, e.g. Resizing, FileSystemResizePending: (type, message)
    conditions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VolumePlan:
    """The claims to patch to `size`, and the claims still growing (asked, not yet there)."""

    size: str
    to_patch: tuple[str, ...] = ()
    growing: tuple[ClaimView, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)  # claim -> the API's message


def _bytes(quantity: str | None) -> Decimal | None:
    if not quantity:
        return None
    try:
        return Decimal(parse_quantity(quantity))
    except ValueError:
        return None


def plan(cluster: str, size: str, replicas: int, claims: Sequence[ClaimView]) -> VolumePlan:
    """Bound claims of current members (ordinal < replicas) that request less than `size` are
    patched; claims whose capacity is below `size` (or that are not bound yet) are growing. Claims of removed nodes are
    left alone: they are deleted or kept as they are (pvcRetention), and one that is reused by a
    later scale-up becomes a member's claim again and grows then."""
    want = _bytes(size)
    if want is None:
        return VolumePlan(size)
    to_patch, growing = [], []
    for claim in sorted(claims, key=lambda c: c.name):
        ordinal = claim_ordinal(cluster, claim.name)
        if ordinal is None or ordinal >= replicas:
            continue
        requested = _bytes(claim.requested)
        capacity = _bytes(claim.capacity)
        if requested is not None and requested < want:
            # The API resizes only bound claims: one made from the old template waits for its
            # volume (e.g. WaitForFirstConsumer) and is patched on a later tick.
            if claim.bound:
                to_patch.append(claim.name)
            else:
                growing.append(claim)
        elif claim.bound and capacity is not None and capacity < want:
            growing.append(claim)
    return VolumePlan(size, tuple(to_patch), tuple(growing))


def _describe(claim: ClaimView) -> str:
    if not claim.bound:
        return f"{claim.name} requests {claim.requested or '?'}, grows once bound"
    notes = [f"{kind}: {msg}" if msg else kind for kind, msg in claim.conditions]
    base = f"{claim.name} {claim.capacity or '?'} -> requested {claim.requested or '?'}"
    return f"{base} ({'; '.join(notes)})" if notes else base


def condition(p: VolumePlan) -> dict[str, Any]:
    """VolumesResized: True when every member's volume has reached storage.size; False with
    reason ResizeRefused (the API's message) or Resizing (which claims are still growing)."""
    if p.refused:
        msg = "; ".join(f"{name}: {why}" for name, why in sorted(p.refused.items()))
        return _cond(False, "ResizeRefused", f"cannot grow to {p.size}: {msg}")
    pending = sorted({c.name for c in p.growing} | set(p.to_patch))
    if pending:
        by_name = {c.name: c for c in p.growing}
        parts = [_describe(by_name[n]) if n in by_name else f"{n} not yet patched" for n in pending]
        return _cond(False, "Resizing", f"growing to {p.size}: {', '.join(parts)}")
    return _cond(True, "Resized", f"every member's volume has {p.size} or more")


def _cond(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": CONDITION,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
    }


def events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """An event when a refusal is new or changes, and one when every volume has grown; nothing
    while the condition stays the same (the reconcile runs every two seconds)."""
    old = old or {}
    if new["reason"] == "ResizeRefused" and old.get("message") != new["message"]:
        return [("Warning", "VolumeResizeRefused", new["message"])]
    if new["status"] == "True" and old.get("status") == "False":
        return [("Normal", "VolumesResized", new["message"])]
    return []
