"""Pure scaling decisions: what the cluster looks like now -> the one next step to take.

The operator is level-triggered: every reconcile observes the StatefulSet, the pods and the
database's own membership view, and this module picks exactly one step. Nothing is remembered
between steps, so an operator restart resumes from what the database and the objects report.
Safety rules live here: a StatefulSet shrinks only after its highest node has left the ring
(handed off every range), scale-down stops at the replication factor, and nothing moves while
the database runs a transition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from limedb_operator import verification
from limedb_operator.manifests import HTTP_PORT, claim_ordinal, node_url

# Member states as the database reports them (lower-case in its API, capitalised in status).
JOINING, NORMAL, LEAVING, LEFT = "Joining", "Normal", "Leaving", "Left"
_STATES = {s.lower(): s for s in (JOINING, NORMAL, LEAVING, LEFT)}


@dataclass(frozen=True)
class PodView:
    name: str
    ordinal: int
    ip: str | None
    ready: bool
    terminating: bool = False
    scheme: str = "http"  # https with spec.tls enabled
    revision: str | None = None  # controller-revision-hash: the StatefulSet template it runs
    last_error: str = ""  # the container's last termination message

    @property
    def url(self) -> str | None:
        """How the operator reaches the pod: by its IP from the Pod status (over TLS it checks
        the certificate against the pod's DNS name, manifests.node_host)."""
        return f"{self.scheme}://{self.ip}:{HTTP_PORT}" if self.ip else None


@dataclass(frozen=True)
class Member:
    node_id: str
    state: str


@dataclass(frozen=True)
class Transition:
    kind: str  # "join" | "leave" | ...
    node: str
    phase: str
    ranges_moved: int = 0
    ranges_total: int = 0
    started_at: str | None = None


@dataclass(frozen=True)
class RingView:
    """The database's answer to admin_status(): who owns data, and what is moving."""

    epoch: int
    members: tuple[Member, ...]
    transition: Transition | None = None
    replication_factor: int | None = None
    # The newest verification the node reports (limedb_operator.verification), or None.
    verification: Mapping[str, Any] | None = None
    # Hints the answering nodes hold, summed by target node id (a roll waits for them).
    hints_pending: Mapping[str, int] = field(default_factory=dict)
    # node id -> the ring-record format that node announces.
    ring_formats: Mapping[str, int] = field(default_factory=dict)

    def member(self, node_id: str) -> Member | None:
        return next((m for m in self.members if m.node_id == node_id), None)


@dataclass(frozen=True)
class Observed:
    name: str  # the LimeCluster (and StatefulSet) name; pod i is f"{name}-{i}"
    namespace: str
    desired: int  # spec.nodes
    replication_factor: int
    replicas: int | None  # StatefulSet spec.replicas; None when it does not exist yet
    pods: tuple[PodView, ...] = ()
    ring: RingView | None = None  # None: no ready node answered
    scheme: str = "http"  # of the node URLs (identities): https with spec.tls enabled
    # Why no node answered when they refused the operator's admin credentials (401), else None.
    admin_refused: str | None = None


@dataclass(frozen=True)
class Step:
    """One action. kind is one of: create, set-replicas, join, leave, set-rf, wait, done."""

    kind: str
    reason: str
    message: str
    replicas: int | None = None
    rf: int | None = None
    pod: PodView | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class Decision:
    step: Step
    valid: bool = True
    invalid_reason: str = ""
    invalid_message: str = ""
    scaling: str | None = None  # "up" | "down" | None
    rolling: bool = False  # a rolling upgrade runs or waits (limedb_operator.rolling)


def ring_view_from_status(raw: Mapping[str, Any]) -> RingView:
    """Parse the admin_status() contract {"epoch", "members", "transition"}; tolerant of the
    spellings a JSON API may use (node_id / nodeId / id, ranges_moved / rangesMoved)."""

    def pick(d: Mapping[str, Any], *names: str, default: Any = None) -> Any:
        for n in names:
            if d.get(n) is not None:
                return d[n]
        return default

    members = []
    for m in raw.get("members") or []:
        node_id = pick(m, "node_id", "nodeId", "id", "node")
        state = _STATES.get(str(pick(m, "state", "status", default="normal")).lower(), NORMAL)
        if node_id:
            members.append(Member(str(node_id), state))
    transition = None
    t = raw.get("transition")
    if t:
        transition = Transition(
            kind=str(pick(t, "kind", "type", "op", default="unknown")),
            node=str(pick(t, "node", "node_id", "nodeId", "change", default="")),
            phase=str(pick(t, "phase", "state", default="")),
            ranges_moved=int(pick(t, "ranges_moved", "rangesMoved", default=0)),
            ranges_total=int(pick(t, "ranges_total", "rangesTotal", default=0)),
            started_at=pick(t, "started_at", "startedAt"),
        )
    rf = raw.get("replication_factor", raw.get("replicationFactor"))
    hints = {str(k): int(v) for k, v in (raw.get("hints_pending") or {}).items() if int(v) > 0}
    formats = {}
    if raw.get("node_id") and raw.get("ring_format") is not None:
        formats[str(raw["node_id"])] = int(raw["ring_format"])
    return RingView(
        int(raw.get("epoch") or 0),
        tuple(members),
        transition,
        int(rf) if rf else None,
        verification.from_admin_status(raw),
        hints,
        formats,
    )


def freshest(views: Sequence[RingView]) -> RingView | None:
    """Several nodes may answer while gossip spreads a new ring; the highest epoch wins, with
    the newest verification any of them reports (a node that was down may not have it), the
    hints they hold together and the ring formats each announces."""
    best = max(views, key=lambda v: v.epoch, default=None)
    if best is None:
        return None
    hints: dict[str, int] = {}
    formats: dict[str, int] = {}
    for v in views:  # each node holds its own hints: the cluster's are their sum
        for target, count in v.hints_pending.items():
            hints[target] = hints.get(target, 0) + count
        formats.update(v.ring_formats)
    return replace(
        best,
        verification=verification.newest([v.verification for v in views]),
        hints_pending=hints,
        ring_formats=formats,
    )


CREDENTIALS_REJECTED = "AdminCredentialsRejected"


def _wait(reason: str, message: str, **kw: Any) -> Step:
    return Step("wait", reason, message, **kw)


def decide(obs: Observed) -> Decision:
    """The next step towards spec.nodes, or a wait with the reason."""
    rf = obs.replication_factor
    valid = obs.desired >= rf
    invalid = {}
    if not valid:
        invalid = {
            "valid": False,
            "invalid_reason": "BelowReplicationFactor",
            "invalid_message": (
                f"spec.nodes={obs.desired} is below replicationFactor={rf}: every key needs "
                f"{rf} distinct nodes, so the cluster is kept at its current size"
            ),
        }

    if obs.replicas is None:
        if not valid:
            return Decision(_wait("Invalid", "not creating a cluster below its RF"), **invalid)
        return Decision(
            Step("create", "Creating", f"creating {obs.desired} nodes", replicas=obs.desired),
            scaling="up",
        )

    replicas = obs.replicas
    # Below RF the operator never shrinks, but still grows and joins pods already asked for.
    target = obs.desired if valid else max(obs.desired, replicas)
    ring = obs.ring
    pods = {p.ordinal: p for p in obs.pods}

    if replicas < target:
        return Decision(
            Step(
                "set-replicas",
                "ScalingUp",
                f"growing the StatefulSet from {replicas} to {target} pods",
                replicas=target,
            ),
            scaling="up",
            **invalid,
        )

    if ring is None and obs.admin_refused is not None:
        return Decision(
            _wait(CREDENTIALS_REJECTED, obs.admin_refused),
            scaling=_direction(replicas, target),
            **invalid,
        )
    if ring is None:
        return Decision(
            _wait("DatabaseUnreachable", "no Ready node answered the admin status request"),
            scaling=_direction(replicas, target),
            **invalid,
        )

    if ring.transition is not None:
        t = ring.transition
        return Decision(
            _wait(
                "TransitionInProgress",
                f"{t.kind} of {t.node} is {t.phase or 'running'} "
                f"({t.ranges_moved}/{t.ranges_total} ranges)",
            ),
            scaling=_direction(replicas, target),
            **invalid,
        )

    busy = [m for m in ring.members if m.state in (JOINING, LEAVING)]
    if busy:
        return Decision(
            _wait("TransitionInProgress", f"{busy[0].node_id} is {busy[0].state}"),
            scaling=_direction(replicas, target),
            **invalid,
        )

    # Join the pods that should be members, lowest ordinal first, one at a time.
    for ordinal in range(min(replicas, target)):
        pod = pods.get(ordinal)
        member = ring.member(_node_id(obs, ordinal))
        if member is not None and member.state == NORMAL:
            continue
        if pod is None or not pod.ready or pod.terminating or not pod.url:
            return Decision(
                _wait("PodsNotReady", f"waiting for pod ordinal {ordinal} to be Ready"),
                scaling=_direction(replicas, target) or "up",
                **invalid,
            )
        return Decision(
            Step("join", "Joining", f"joining {pod.name} to the ring", pod=pod),
            scaling="up",
            **invalid,
        )

    if ring.replication_factor is not None and ring.replication_factor != rf:
        normal = sum(1 for m in ring.members if m.state == NORMAL)
        if rf <= normal:
            # Lowering RF comes before a scale-down (so the leave is allowed), raising it after
            # the new nodes joined (so there are enough replicas to stream to).
            return Decision(
                Step(
                    "set-rf",
                    "ReplicationFactor",
                    f"changing the replication factor from {ring.replication_factor} to {rf}",
                    rf=rf,
                ),
                scaling=_direction(replicas, target),
                **invalid,
            )

    if replicas > target:
        highest = replicas - 1
        node_id = _node_id(obs, highest)
        member = ring.member(node_id)
        if member is None or member.state == LEFT:
            # The node owns nothing any more (it left, or never joined): safe to remove.
            return Decision(
                Step(
                    "set-replicas",
                    "ScalingDown",
                    f"{node_id} has handed off its data; shrinking to {highest} pods",
                    replicas=highest,
                    node_id=node_id,
                ),
                scaling="down",
                **invalid,
            )
        staying = [m for m in ring.members if m.state == NORMAL and m.node_id != node_id]
        if len(staying) < rf:
            return Decision(
                _wait(
                    "BelowReplicationFactor",
                    f"{node_id} cannot leave: {len(staying)} nodes would remain for RF={rf}",
                ),
                valid=False,
                invalid_reason="BelowReplicationFactor",
                invalid_message=f"removing {node_id} would leave fewer than {rf} nodes",
            )
        unready = [p.name for o, p in sorted(pods.items()) if o < highest and not p.ready]
        if unready:
            # A leave streams ranges to the remaining replicas; they must all be up for it.
            return Decision(
                _wait("PodsNotReady", f"{', '.join(unready)} not Ready; scale-down waits"),
                scaling="down",
                **invalid,
            )
        return Decision(
            Step("leave", "Leaving", f"{node_id} leaves the ring", node_id=node_id),
            scaling="down",
            **invalid,
        )

    not_ready = [p.name for p in obs.pods if p.ordinal < replicas and not p.ready]
    if not_ready:
        return Decision(
            Step("done", "NodesNotReady", f"not Ready: {', '.join(sorted(not_ready))}"),
            **invalid,
        )
    return Decision(Step("done", "Converged", f"{replicas} nodes are Normal members"), **invalid)


def _direction(replicas: int, target: int) -> str | None:
    if replicas < target:
        return "up"
    if replicas > target:
        return "down"
    return None


def _node_id(obs: Observed, ordinal: int) -> str:
    # Identity follows the pod name, which exists even while the pod itself is recreated.
    return node_url(obs.name, obs.namespace, ordinal, obs.scheme)


def pvcs_to_delete(
    pvc_names: Sequence[str], cluster: str, replicas: int, pods: Sequence[PodView], policy: str
) -> list[str]:
    """Volumes of removed nodes under whenScaled=Delete: ordinal >= replicas and no pod left
    (the StatefulSet controller may delete them first; deleting again is harmless)."""
    if policy != "Delete":
        return []
    live = {p.ordinal for p in pods}
    out = []
    for pvc in pvc_names:
        ordinal = claim_ordinal(cluster, pvc)
        if ordinal is not None and ordinal >= replicas and ordinal not in live:
            out.append(pvc)
    return sorted(out)
