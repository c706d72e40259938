"""Pure: the `Replacing` condition and its events while a member that lost its data is replaced.

The node does the replacing itself (limedb.cluster.rejoin: a pod back on an empty volume under
an identity the ring lists asks the survivors to stream its ranges to it); the operator only
reports it, from the ring transition every node shows in admin_status(): condition `Replacing`
True with the pod and the ranges streamed so far, one Normal event `ReplacingMember` when it
starts and one `MemberReplaced` when it is over. `spec.autoReplace: false` becomes
LIMEDB_AUTO_REPLACE=false in the pods (manifests.node_env).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from limedb_operator.manifests import pod_of_node
from limedb_operator.scaling import RingView

CONDITION = "Replacing"
REPLACE = "replace"


def condition(ring: RingView | None) -> dict[str, Any]:
    """`Replacing` True while a replace transition runs, with its progress."""
    t = ring.transition if ring is not None else None
    if t is None or t.kind != REPLACE:
        return {"type": CONDITION, "status": "False", "reason": "Idle", "message": ""}
    share = f" ({100 * t.ranges_moved // t.ranges_total}%)" if t.ranges_total else ""
    return {
        "type": CONDITION,
        "status": "True",
        "reason": "ReplacingMember",
        "message": (
            f"{pod_of_node(t.node)} lost its data: the surviving replicas stream its ranges to "
            f"it, {t.ranges_moved} of {t.ranges_total} ranges{share}, {t.phase or 'running'}"
        ),
    }


def events(
    old_conditions: Sequence[Mapping[str, Any]] | None, new: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """One event when the condition flips: the replace started, or it is over."""
    prev = next((c for c in old_conditions or [] if c.get("type") == CONDITION), None)
    was = prev is not None and prev.get("status") == "True"
    now = new["status"] == "True"
    if now and not was:
        return [("Normal", "ReplacingMember", new["message"])]
    if was and not now:
        pod = str(prev.get("message") or "").split(" ", 1)[0] or "the member"
        return [("Normal", "MemberReplaced", f"{pod} holds its ranges again")]
    return []
