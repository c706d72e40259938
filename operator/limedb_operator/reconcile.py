"""One reconcile step of a LimeCluster: observe -> decide (pure) -> act once -> report status."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from limedb_operator import (
    admin_access,
    backup_reconcile,
    database,
    issuing,
    manifests,
    monitoring,
    replacement,
    restoring,
    rolling,
    tls,
    verification,
    volumes,
)
from limedb_operator.kube import Kube
from limedb_operator.scaling import (
    NORMAL,
    Decision,
    Observed,
    PodView,
    RingView,
    Step,
    Transition,
    decide,
    pvcs_to_delete,
)
from limedb_operator.status import build_status, credentials_event, flipped

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: dict[str, Any]
    decision: Decision
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def converged(self) -> bool:
        return self.decision.step.kind == "done"


_last_step: dict[tuple[str, str], tuple[str, str, str]] = {}


def _log_step(namespace: str, name: str, step: Step) -> None:
    """INFO when a cluster's step changes, DEBUG when a tick only repeats it (every 2 s)."""
    seen = (step.kind, step.reason, step.message)
    level = logging.DEBUG if _last_step.get((namespace, name)) == seen else logging.INFO
    _last_step[(namespace, name)] = seen
    log.log(level, "%s/%s: %s %s: %s", namespace, name, step.kind, step.reason, step.message)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _claim_size(sts: Mapping[str, Any] | None) -> str | None:
    try:
        return sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    except (KeyError, IndexError, TypeError):
        return None


def _template_env(sts: Mapping[str, Any] | None, name: str) -> str | None:
    try:
        env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    except (KeyError, IndexError, TypeError):
        return None
    return next((e.get("value") for e in env if e.get("name") == name), None)


def _target(obs: Observed, pod: PodView) -> database.Target:
    return database.pod_target(obs.namespace, pod)


def _coordinator(obs: Observed, ring: RingView | None, exclude: str = "") -> PodView | None:
    """A Ready pod whose node is a Normal member: it can drive a ring change."""
    for pod in obs.pods:
        node_id = manifests.node_url(obs.name, obs.namespace, pod.ordinal, obs.scheme)
        member = ring.member(node_id) if ring else None
        if pod.ready and pod.url and member and member.state == NORMAL and node_id != exclude:
            return pod
    return None


def _change_ring(
    obs: Observed, ring: RingView | None, step: Step, access: database.Access
) -> list[tuple[str, str, str]]:
    """Ask a Ready member to make the ring change of `step`; returns the events to post."""
    if step.kind == "join" and step.pod is not None:
        coord = _coordinator(obs, ring)
        if coord is None:
            return [("Warning", "NoCoordinator", f"no Ready member can join {step.pod.name}")]
        # Over TLS the coordinator checks the new node's certificate: it must be asked by the
        # name the certificate holds, not by IP.
        new = step.pod.url or ""
        if obs.scheme == "https":
            new = manifests.node_url(obs.name, obs.namespace, step.pod.ordinal, obs.scheme)
        database.join(_target(obs, coord), new, access)
        return [("Normal", "Joining", f"{step.pod.name} joins the ring via {coord.name}")]
    if step.kind == "leave" and step.node_id:
        pod = manifests.pod_of_node(step.node_id)
        coord = _coordinator(obs, ring, exclude=step.node_id)
        if coord is None:
            return [("Warning", "NoCoordinator", f"no Ready member can remove {pod}")]
        database.leave(_target(obs, coord), step.node_id, access)
        return [("Normal", "Leaving", f"{pod} hands off its data and leaves the ring")]
    if step.kind == "set-rf" and step.rf is not None:
        coord = _coordinator(obs, ring)
        if coord is None:
            return [("Warning", "NoCoordinator", "no Ready member can change the RF")]
        database.set_replication_factor(_target(obs, coord), step.rf, access)
        return [("Normal", "ReplicationFactor", step.message)]
    return []


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{e.status} {e.reason}"


def _grow_volumes(
    kube: Kube,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    replicas: int,
    claims: list[volumes.ClaimView],
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Patch the members' claims below storage.size; a refusal (unbound claim, StorageClass
    without allowVolumeExpansion) goes to the condition, and the next tick tries again."""
    size = spec["storage"]["size"]
    plan = volumes.plan(name, size, replicas, claims)
    refused: dict[str, str] = {}
    patched: set[str] = set()
    events: list[tuple[str, str, str]] = []
    for pvc in plan.to_patch:
        try:
            kube.resize_claim(pvc, namespace, size)
        except ApiException as e:
            log.warning("%s/%s: resizing %s refused: %s", namespace, name, pvc, e.reason)
            refused[pvc] = _api_message(e)
            continue
        patched.add(pvc)
        events.append(("Normal", "VolumeResizing", f"{pvc} requests {size}"))
    # Status describes the claims as they are after this step's patches.
    now = [replace(c, requested=size) if c.name in patched else c for c in claims]
    after = replace(volumes.plan(name, size, replicas, now), refused=refused)
    return volumes.condition(after), events


# The last error applying each cluster's ServiceMonitor, so a missing CRD or permission is one
# Warning event, not one per tick.
_monitor_errors: dict[tuple[str, str], str] = {}
# Clusters whose own ServiceMonitor this process has seen to be gone (or could not look for):
# one GET per cluster and operator process where none is wanted, not one per tick.
_monitor_gone: set[tuple[str, str]] = set()


def _service_monitor(
    kube: Kube, name: str, namespace: str, spec: Mapping[str, Any], body: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """Apply the cluster's own ServiceMonitor (TLS clusters, monitoring on), or remove the one
    it had once monitoring is turned off; the cluster runs the same whether or not Prometheus'
    CRDs are there."""
    settings = kube.service_monitors
    obj = monitoring.service_monitor(name, namespace, spec, settings) if settings else None
    key = (namespace, name)
    if obj is None:
        return _drop_service_monitor(kube, name, namespace, body)
    _monitor_gone.discard(key)
    try:
        kube.apply(obj, body)
    except ApiException as e:
        message = f"ServiceMonitor {obj['metadata']['name']} not applied: {_api_message(e)}"
        log.warning("%s/%s: %s", namespace, name, message)
        if _monitor_errors.get(key) == message:
            return []
        _monitor_errors[key] = message
        return [("Warning", "ServiceMonitorFailed", message[:500])]
    _monitor_errors.pop(key, None)
    return []


def _drop_service_monitor(
    kube: Kube, name: str, namespace: str, body: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """Delete the ServiceMonitor the operator made for this cluster, if there is one; one made
    by someone else under the same name stays."""
    key = (namespace, name)
    if key in _monitor_gone:
        return []
    monitor = monitoring.service_monitor_name(name)
    try:
        outcome = kube.delete_owned_service_monitor(monitor, namespace, body["metadata"]["uid"])
    except ApiException as e:
        if e.status not in (401, 403):
            log.warning("%s/%s: ServiceMonitor %s not removed: %s", namespace, name, monitor, e)
            return []  # tried again next tick
        # Not allowed to look (a chart from before the operator could): nothing to do here.
        log.info("%s/%s: cannot look for ServiceMonitor %s: %s", namespace, name, monitor, e)
        outcome = "unknown"
    _monitor_gone.add(key)
    _monitor_errors.pop(key, None)
    if outcome == "foreign":
        log.info(
            "%s/%s: ServiceMonitor %s was not made by the operator for this cluster: left alone",
            namespace,
            name,
            monitor,
        )
    if outcome != "deleted":
        return []
    log.info("%s/%s: removed ServiceMonitor %s", namespace, name, monitor)
    return [("Normal", "ServiceMonitorRemoved", f"{monitor} removed: no longer wanted")]


def _describe(t: Transition | None) -> str | None:
    return None if t is None else f"{t.kind} of {t.node} runs"


def _roll_step(
    obs: Observed, sts: Mapping[str, Any], spec: Mapping[str, Any], step: Step
) -> rolling.RollStep:
    """The roll's next step from what this tick observed; it waits while the cluster scales."""
    sts_status = sts.get("status") or {}
    generation = sts["metadata"].get("generation")
    ring = obs.ring
    rf = (ring.replication_factor if ring else None) or obs.replication_factor
    view = rolling.RollView(
        update_revision=sts_status.get("updateRevision"),
        replicas=obs.replicas or 0,
        pods=tuple(
            rolling.RollPod(
                name=p.name,
                ordinal=p.ordinal,
                revision=p.revision,
                ready=p.ready,
                terminating=p.terminating,
                node_id=manifests.node_url(obs.name, obs.namespace, p.ordinal, obs.scheme),
                last_error=p.last_error,
            )
            for p in obs.pods
        ),
        members={m.node_id: m.state for m in ring.members} if ring else {},
        transition=_describe(ring.transition) if ring else None,
        hints_pending=ring.hints_pending if ring else {},
        replication_factor=rf,
        write_quorum=rolling.write_quorum(spec["consistency"], rf),
        ring_formats=ring.ring_formats if ring else {},
    )
    roll = rolling.next_step(view)
    if not roll.rolling:
        return roll
    if generation is not None and (sts_status.get("observedGeneration") or 0) < generation:
        return replace(
            roll,
            kind="wait",
            reason="TemplateChanging",
            pod=None,
            message="the StatefulSet controller has not seen the new template yet",
        )
    if step.kind != "done":
        return replace(
            roll,
            kind="wait",
            reason="WaitingForScaling",
            pod=None,
            message=f"the roll waits for the scaling step: {step.message}",
        )
    if ring is None:
        return replace(
            roll,
            kind="wait",
            reason="DatabaseUnreachable",
            pod=None,
            message="no Ready node answered the admin status request",
        )
    return roll


_WARN_REASONS = {"PodsNotReady", "QuorumAtRisk", "DowngradeRefused", "MembersNotNormal"}


def _roll_events(
    old_conditions: list[dict[str, Any]] | None, roll: rolling.RollStep
) -> list[tuple[str, str, str]]:
    """One event when the roll's reason changes (why it waits, that it finished)."""
    prev = next((c for c in old_conditions or [] if c.get("type") == rolling.CONDITION), None)
    if prev is not None and prev.get("reason") == roll.reason:
        return []
    if roll.kind == "done":
        if prev is None or prev.get("status") != "True":
            return []
        return [("Normal", "Upgraded", roll.message)]
    if roll.reason not in _WARN_REASONS:
        return []  # a restart has its own event; the waits in between are routine
    return [("Warning", f"Upgrade{roll.reason}", roll.message)]


def _upgrade_status(
    sts: Mapping[str, Any] | None, roll: rolling.RollStep | None
) -> dict[str, Any] | None:
    if sts is None or roll is None or not roll.rolling and roll.kind != "refuse":
        return None  # merge-patching None removes it once every pod runs the new revision
    out: dict[str, Any] = {
        "revision": (sts.get("status") or {}).get("updateRevision") or "",
        "updatedNodes": roll.updated,
        "nodes": roll.total,
    }
    if roll.pod:
        out["next"] = roll.pod
    return out


def reconcile(kube: Kube, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = manifests.with_defaults(body.get("spec") or {})
    old_status = body.get("status") or {}

    secret = kube.generated_secret("cluster", name, namespace, body)
    kube.generated_secret("resp", name, namespace, body)  # the pods read it: before them
    if manifests.generates_admin_secret(spec):
        # Before the pods read it; kept with the volumes when they are retained.
        owned = manifests.owns_generated_secret("admin", spec)
        kube.generated_secret("admin", name, namespace, body, owned)
    sts = kube.statefulset(name, namespace)
    replicas = None if sts is None else int(sts["spec"].get("replicas") or 0)
    scheme = tls.scheme(spec)
    # Certificates first: for every pod that runs or that this step may add (up to
    # spec.nodes), before the StatefulSet that mounts them is applied.
    ca_pem = issuing.ensure(
        kube, name, namespace, spec, body, max(replicas or 0, int(spec["nodes"]))
    )
    access = admin_access.cluster_access(kube, name, namespace, spec, secret, ca_pem)
    pods = kube.pods(name, namespace, scheme) if sts is not None else ()

    obs = Observed(
        name, namespace, spec["nodes"], spec["replicationFactor"], replicas, pods, None, scheme
    )
    targets = [_target(obs, p) for p in pods if p.ready and p.url and not p.terminating]
    # Every Ready node: each holds its own hints, and a roll waits for all of them.
    read = database.read_ring(targets, access, ask=len(targets)) if targets else None
    ring = read.view if read is not None else None
    refused = database.refused_message(access) if read is not None and read.refused else None
    obs = replace(obs, ring=ring, admin_refused=refused)
    decision = decide(obs)
    step = decision.step
    events: list[tuple[str, str, str]] = []
    _log_step(namespace, name, step)

    # Children are re-applied every step so drift is repaired; the replica count is the
    # decision's, never spec.nodes directly.
    new_replicas = step.replicas if step.kind in ("create", "set-replicas") else replicas
    if new_replicas is not None:
        applied_spec = dict(spec)
        old_size = _claim_size(sts)
        if old_size:  # volumeClaimTemplates are immutable in a StatefulSet
            applied_spec["storage"] = {**spec["storage"], "size": old_size}
        # Founders (seeds) and the bootstrap RF are fixed when the cluster is created: a change
        # would restart every pod, and later RF changes go through the database's admin API.
        seeds = _template_env(sts, "LIMEDB_SEEDS")
        founders = len(seeds.split(",")) if seeds else new_replicas
        boot_rf = _template_env(sts, "LIMEDB_REPLICATION_FACTOR")
        if boot_rf:
            applied_spec["replicationFactor"] = int(boot_rf)
        for child in manifests.children(name, namespace, applied_spec, new_replicas, founders):
            kube.apply(child, body)
        events.extend(_service_monitor(kube, name, namespace, spec, body))

    if step.kind in ("create", "set-replicas"):
        events.append(("Normal", step.reason, step.message))
    else:
        try:
            events.extend(_change_ring(obs, ring, step, access))
        except Exception as e:  # refused (409) or unreachable: the next tick decides again
            log.warning("%s/%s: %s failed: %s", namespace, name, step.kind, e)
            events.append(("Warning", "RingChangeFailed", f"{step.message}: {e}"[:500]))

    old_conditions = old_status.get("conditions")
    extra_conditions: list[dict[str, Any]] = []
    roll: rolling.RollStep | None = None
    if sts is not None and replicas is not None:
        roll = _roll_step(obs, sts, spec, step)
        if roll.kind == "restart" and roll.pod is not None:
            kube.delete_pod(roll.pod, namespace)
            events.append(("Normal", "Restarting", roll.message))
        events.extend(_roll_events(old_conditions, roll))
        extra_conditions.append(rolling.condition(roll))
        if roll.rolling and step.kind == "done":
            # The roll is what the cluster is doing now: Progressing, phase Upgrading.
            decision = replace(
                decision,
                step=Step("wait", roll.reason, roll.message),
                rolling=True,
            )
    if replicas is not None:
        policy = spec["pvcRetention"]["whenScaled"]
        current = new_replicas if new_replicas is not None else replicas
        claims = kube.claims(name, namespace)
        names = [c.name for c in claims]
        for pvc in pvcs_to_delete(names, name, current, pods, policy):
            kube.delete_pvc(pvc, namespace)
            events.append(("Normal", "VolumeDeleted", f"{pvc} deleted (whenScaled=Delete)"))
        volume_cond, volume_events = _grow_volumes(kube, name, namespace, spec, current, claims)
        old_cond = next(
            (c for c in old_conditions or [] if c.get("type") == volumes.CONDITION), None
        )
        extra_conditions.append(volume_cond)
        events.extend(volume_events)
        events.extend(volumes.events(old_cond, volume_cond))

    restore_status = None
    if spec.get("restoreFrom"):
        # Restore once every node is a Ready member; never stops or restarts a pod.
        converged = step.kind == "done" and step.reason == "Converged"
        restore = backup_reconcile.reconcile_restore(
            kube, namespace, spec["restoreFrom"], old_status.get("restore"), converged, pods,
            access, backup_reconcile.now_utc(),
        )  # fmt: skip
        restore_status = restore.status
        events.extend(restore.events)
        restored = restoring.condition(restore_status)
        if restored is not None:
            extra_conditions.append(restored)

    replacing = replacement.condition(ring)
    extra_conditions.append(replacing)
    events.extend(replacement.events(old_conditions, replacing))

    rejected = credentials_event(old_conditions, decision.step)
    if rejected is not None:
        events.append(rejected)
    if not decision.valid and flipped(old_conditions, "Valid", "False"):
        events.append(("Warning", decision.invalid_reason, decision.invalid_message))
    if (
        decision.step.kind == "done"
        and decision.step.reason == "Converged"
        and flipped(old_conditions, "Progressing", "False")
    ):
        events.append(("Normal", "Converged", step.message))

    if new_replicas is not None and new_replicas != replicas:
        obs = replace(obs, replicas=new_replicas)
    status = build_status(
        obs, decision, old_status, _now(), meta.get("generation"), extra_conditions
    )
    if restore_status is not None:
        status["restore"] = restore_status
    status["upgrade"] = _upgrade_status(sts, roll)
    verified = verification.event(
        old_status.get("lastVerification"), status.get("lastVerification")
    )
    if verified is not None:
        events.append(verified)
    return Outcome(status, decision, events)
