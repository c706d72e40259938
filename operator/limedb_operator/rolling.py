"""Pure rolling-upgrade decisions: which pod restarts next, or why the roll waits.

The StatefulSet's updateStrategy is OnDelete: a template change (image, settings, env,
resources) only makes a new controller revision, and each pod moves to it when the operator
deletes it. Every tick the operator compares the revision each pod runs (its
`controller-revision-hash` label) with the StatefulSet's update revision and asks `next_step`;
nothing else is remembered, so an operator restart resumes the roll and a pod that already runs
the new revision is never restarted again.

A pod goes only when the cluster can spare it: every member up, Ready and Normal, no ring
transition running, no hint waiting for any member (the previous restarted node has caught up),
and the replicas left of every range (RF - 1, all others being up) still reach the write quorum
W. Highest ordinal first, one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CONDITION = "Upgrading"
# A node that finds a ring record newer than it reads says so as it exits
# (limedb.cluster.ring.record.UnreadableFormat); the kubelet keeps the log tail as the
# container's termination message (terminationMessagePolicy FallbackToLogsOnError).
REFUSED_FORMAT_MARK = "downgrade across ring formats is not supported"


@dataclass(frozen=True)
class RollPod:
    name: str
    ordinal: int
    revision: str | None  # the controller-revision-hash label: the template the pod runs
    ready: bool
    terminating: bool = False
    node_id: str = ""
    last_error: str = ""  # the container's last termination message


@dataclass(frozen=True)
class RollView:
    """What a roll decision needs, observed at one tick."""

    update_revision: str | None  # the StatefulSet's status.updateRevision
    replicas: int
    pods: tuple[RollPod, ...]
    members: Mapping[str, str]  # node id -> state (Normal, Joining, ...) as the ring says
    transition: str | None  # a running transition, described; None when none runs
    hints_pending: Mapping[str, int]  # hints every answering node holds, summed by target
    replication_factor: int
    write_quorum: int
    ring_formats: Mapping[str, int] = field(default_factory=dict)  # node id -> format spoken


@dataclass(frozen=True)
class RollStep:
    """kind: "restart" (delete `pod`), "wait" (the roll pauses, reason says why), "refuse"
    (the roll stops until the spec changes), "done" (every pod runs the update revision)."""

    kind: str
    reason: str
    message: str
    pod: str | None = None
    updated: int = 0
    total: int = 0

    @property
    def rolling(self) -> bool:
        return self.kind != "done"


def write_quorum(consistency: str, rf: int) -> int:
    """W for spec.consistency: how many replicas of a range must take a write."""
    if consistency == "one":
        return 1
    if consistency == "all":
        return rf
    return rf // 2 + 1


def next_step(view: RollView) -> RollStep:
    members = [p for p in view.pods if p.ordinal < view.replicas]
    total = len(members)
    if view.update_revision is None:
        return RollStep("done", "UpToDate", "no StatefulSet revision yet", total=total)
    stale = [p for p in members if p.revision != view.update_revision]
    updated = total - len(stale)

    def step(kind: str, reason: str, message: str, pod: str | None = None) -> RollStep:
        return RollStep(kind, reason, message, pod, updated, total)

    if not stale:
        return step("done", "UpToDate", f"all {total} pods run revision {view.update_revision}")

    refused = _refused_downgrade(view, members)
    if refused is not None:
        return step("refuse", "DowngradeRefused", refused)

    down = [p for p in members if p.terminating or not p.ready]
    # The pod this roll restarted: terminating, or back at the new revision but not Ready yet.
    ours = [p for p in down if p.terminating or p.revision == view.update_revision]
    if down and len(ours) == len(down):
        names = ", ".join(sorted(p.name for p in ours))
        return step(
            "wait",
            "PodRestarting",
            f"{names} restarting: the next pod waits until it is Ready and caught up "
            f"({updated} of {total} pods updated)",
        )
    if down:
        names = ", ".join(sorted(p.name for p in down))
        return step(
            "wait",
            "PodsNotReady",
            f"{names} not Ready: no other pod restarts until every member is up "
            f"({updated} of {total} pods updated)",
        )
    if view.transition is not None:
        return step(
            "wait", "TransitionInProgress", f"{view.transition}: the roll waits until it ends"
        )
    not_normal = sorted(p.name for p in members if view.members.get(p.node_id) != "Normal")
    if not_normal:
        return step(
            "wait",
            "MembersNotNormal",
            f"{', '.join(not_normal)} not a Normal member of the ring: the roll waits",
        )
    owed = {
        p.name: view.hints_pending.get(p.node_id, 0)
        for p in members
        if view.hints_pending.get(p.node_id, 0) > 0
    }
    if owed:
        detail = ", ".join(f"{n} hints to {pod}" for pod, n in sorted(owed.items()))
        return step(
            "wait",
            "HintsPending",
            f"{detail} not replayed yet: the next pod restarts once they are",
        )
    left = view.replication_factor - 1
    if left < view.write_quorum:
        return step(
            "wait",
            "QuorumAtRisk",
            f"restarting a pod would leave {left} of {view.replication_factor} replicas of its "
            f"ranges, fewer than the {view.write_quorum} a write needs",
        )
    pod = max(stale, key=lambda p: p.ordinal)
    return step(
        "restart",
        "Restarting",
        f"restarting {pod.name} for revision {view.update_revision} ({updated + 1} of {total})",
        pod.name,
    )


def _refused_downgrade(view: RollView, members: Sequence[RollPod]) -> str | None:
    """A pod of the new revision that refused the ring's format, or that speaks an older
    format than the rest of the cluster: a downgrade across ring formats."""
    for p in members:
        if p.revision == view.update_revision and REFUSED_FORMAT_MARK in p.last_error:
            return (
                f"{p.name} at revision {view.update_revision} cannot read the cluster's ring "
                f"record (a downgrade across ring formats); set spec back to the previous "
                f"image: {p.last_error.strip().splitlines()[-1][:300]}"
            )
    new = {
        view.ring_formats[p.node_id]
        for p in members
        if p.revision == view.update_revision and p.node_id in view.ring_formats
    }
    old = {
        view.ring_formats[p.node_id]
        for p in members
        if p.revision != view.update_revision and p.node_id in view.ring_formats
    }
    if new and old and max(new) < max(old):
        return (
            f"revision {view.update_revision} speaks ring format {max(new)}, the cluster's "
            f"nodes {max(old)}: a downgrade across ring formats is refused"
        )
    return None


def condition(step: RollStep) -> dict[str, str]:
    """The `Upgrading` condition: True while a roll runs or waits (reason says why), False
    once every pod runs the update revision or when the roll is refused."""
    status = "True" if step.kind in ("restart", "wait") else "False"
    return {"type": CONDITION, "status": status, "reason": step.reason, "message": step.message}
