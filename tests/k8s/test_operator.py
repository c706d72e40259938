"""The operator, running with the chart's RBAC, builds a LimeCluster's objects on a real control
plane, refuses a scale below RF on the object itself, and applies the PVC policy on deletion.

These tests need no database: pods stay Pending (no pod runner here), which is also what the
operator reports."""

from __future__ import annotations

import kubernetes
import pytest
from k8swait import wait_for
from kubernetes.client.rest import ApiException
from lime_helpers import create, events_for

pytestmark = pytest.mark.k8s

G, V, P = "limedb.io", "v1alpha1", "limeclusters"


def get(api, namespace, name="lime"):
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        G, V, namespace, P, name
    )


def condition(obj, kind):
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_operator_creates_owned_children_and_reports_status(api, namespace, operator):
    lc = create(api, namespace, nodes=3)
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    sts = wait_for(
        lambda: apps.read_namespaced_stateful_set("lime", namespace),
        timeout=60,
        what=f"the StatefulSet (operator log:\n{operator.log_tail()})",
    )
    assert sts.spec.replicas == 3
    assert sts.spec.pod_management_policy == "Parallel"
    assert sts.metadata.owner_references[0].uid == lc["metadata"]["uid"]
    headless = core.read_namespaced_service("lime-headless", namespace)
    assert headless.spec.cluster_ip == "None" and headless.spec.publish_not_ready_addresses
    assert core.read_namespaced_service("lime", namespace).spec.ports[0].port == 8484
    pdb = kubernetes.client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(
        "lime", namespace
    )
    assert pdb.spec.max_unavailable == 1
    secret = core.read_namespaced_secret("lime-secret", namespace)
    assert secret.data["cluster-secret"]
    # The real StatefulSet controller made the pods and their volumes.
    pods = wait_for(
        lambda: len(core.list_namespaced_pod(namespace).items) == 3 or None,
        timeout=30,
        what="3 pods from the StatefulSet controller",
    )
    assert pods
    claims = sorted(
        p.metadata.name for p in core.list_namespaced_persistent_volume_claim(namespace).items
    )
    assert claims == ["data-lime-0", "data-lime-1", "data-lime-2"]
    status = wait_for(
        lambda: (
            (get(api, namespace).get("status") or {}).get("phase") == "Pending"
            and get(api, namespace)["status"]
        ),
        timeout=30,
        what="the operator's status to settle on Pending (no node answers)",
    )
    assert status["nodes"] == 3 and status["readyNodes"] == 0
    assert status["selector"] == "app.kubernetes.io/name=limedb,app.kubernetes.io/instance=lime"
    assert condition(get(api, namespace), "Valid")["status"] == "True"
    assert condition(get(api, namespace), "Progressing")["reason"] == "DatabaseUnreachable"


def test_scale_below_replication_factor_is_refused_with_condition_and_event(
    api, namespace, operator
):
    create(api, namespace, nodes=3, replicationFactor=3)
    apps = kubernetes.client.AppsV1Api(api)
    wait_for(lambda: apps.read_namespaced_stateful_set("lime", namespace), timeout=60, what="sts")
    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
        G, V, namespace, P, "lime", {"spec": {"replicas": 2}}
    )

    def refused():
        c = condition(get(api, namespace), "Valid")
        return c and c["status"] == "False" and c

    c = wait_for(refused, timeout=30, what=f"Valid=False (operator log:\n{operator.log_tail()})")
    assert c["reason"] == "BelowReplicationFactor"
    assert "replicationFactor=3" in c["message"]
    assert get(api, namespace)["status"]["phase"] == "Invalid"
    assert apps.read_namespaced_stateful_set("lime", namespace).spec.replicas == 3
    warnings = wait_for(
        lambda: [e for e in events_for(api, namespace) if e[1] == "BelowReplicationFactor"],
        timeout=15,
        what="a BelowReplicationFactor event",
    )
    assert warnings[0][0] == "Warning"


def _secret(core, namespace, name):
    try:
        return core.read_namespaced_secret(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


@pytest.mark.parametrize("policy", ["Delete", "Retain"])
def test_deleting_the_cluster_applies_the_pvc_policy(api, namespace, operator, policy):
    """The volumes follow pvcRetention.whenDeleted, and so does the generated admin Secret:
    the users on retained volumes keep its password, so it stays with them and a LimeCluster
    made again uses it; with Delete it goes with the cluster, as the other Secrets always do."""
    # Made with Delete: the Retain case also sees the admin Secret let go on a change.
    spec = {"nodes": 3, "pvcRetention": {"whenDeleted": "Delete"}, "auth": {"enabled": True}}
    create(api, namespace, **spec)
    core = kubernetes.client.CoreV1Api(api)

    def claims():
        return [p for p in core.list_namespaced_persistent_volume_claim(namespace).items]

    wait_for(lambda: len(claims()) == 3, timeout=60, what="3 PVCs")
    admin = _secret(core, namespace, "lime-admin")
    assert admin is not None and _secret(core, namespace, "lime-secret") is not None
    assert [ref.kind for ref in admin.metadata.owner_references or []] == ["LimeCluster"]
    if policy == "Retain":
        spec["pvcRetention"] = {"whenDeleted": "Retain"}
        kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
            G, V, namespace, P, "lime", {"spec": {"pvcRetention": spec["pvcRetention"]}}
        )
        wait_for(
            lambda: not _secret(core, namespace, "lime-admin").metadata.owner_references,
            timeout=30,
            what=f"the admin Secret to be let go ({operator.log_tail()})",
        )
        # The StatefulSet's policy follows too, before the cluster is deleted.
        apps = kubernetes.client.AppsV1Api(api)
        wait_for(
            lambda: (
                apps.read_namespaced_stateful_set(
                    "lime", namespace
                ).spec.persistent_volume_claim_retention_policy.when_deleted
                == "Retain"
            ),
            timeout=30,
            what="the StatefulSet's claim policy to be Retain",
        )
    assert "limedb.io/pvc-retention" in get(api, namespace)["metadata"]["finalizers"]
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(
        G, V, namespace, P, "lime"
    )

    def gone():
        try:
            get(api, namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, timeout=60, what=f"the LimeCluster to be deleted ({operator.log_tail()})")
    if policy == "Delete":
        wait_for(
            lambda: all(p.metadata.deletion_timestamp for p in claims()),
            timeout=30,
            what="the PVCs to be deleted",
        )
    else:
        # Garbage collection removes the StatefulSet and pods but never the retained volumes.
        apps = kubernetes.client.AppsV1Api(api)
        wait_for(lambda: not apps.list_namespaced_stateful_set(namespace).items, timeout=30,
                 what="the StatefulSet to be garbage collected")  # fmt: skip
        assert sorted(p.metadata.name for p in claims()) == [
            "data-lime-0",
            "data-lime-1",
            "data-lime-2",
        ]
        assert not any(p.metadata.deletion_timestamp for p in claims())
    # The other generated Secrets always go with the cluster; the admin's follows the volumes.
    wait_for(lambda: _secret(core, namespace, "lime-secret") is None, timeout=30,
             what="the cluster secret to be garbage collected")  # fmt: skip
    if policy == "Delete":
        wait_for(lambda: _secret(core, namespace, "lime-admin") is None, timeout=30,
                 what="the admin Secret to be garbage collected")  # fmt: skip
        return
    kept = _secret(core, namespace, "lime-admin")
    assert kept is not None and kept.data == admin.data
    assert not kept.metadata.owner_references
    create(api, namespace, **spec)
    wait_for(lambda: _secret(core, namespace, "lime-secret") is not None, timeout=60,
             what=f"the cluster made again ({operator.log_tail()})")  # fmt: skip
    again = _secret(core, namespace, "lime-admin")
    assert (
        again is not None and again.data == admin.data and again.metadata.uid == admin.metadata.uid
    )


def test_uninstall_hook_deletes_the_cluster_while_the_operator_runs(api, namespace, operator):
    """The chart's pre-delete hook (limedb_operator.uninstall) returns once the operator has let
    the LimeCluster go, and says so when no operator is there to do it."""
    from limedb_operator.uninstall import delete_and_wait

    objects = kubernetes.client.CustomObjectsApi(api)
    create(api, namespace, nodes=3)
    wait_for(lambda: get(api, namespace)["metadata"].get("finalizers"), timeout=30,
             what="the operator to take the LimeCluster")  # fmt: skip
    operator.stop()
    assert not delete_and_wait(objects, namespace, "lime", timeout_s=3)
    assert get(api, namespace)["metadata"]["deletionTimestamp"]
    operator.start()
    assert delete_and_wait(objects, namespace, "lime", timeout_s=60)
    # Gone already is not an error: a retried hook succeeds.
    assert delete_and_wait(objects, namespace, "lime", timeout_s=1)


def test_tls_self_signed_issues_a_ca_and_a_certificate_per_pod_before_the_pods(
    api, namespace, operator
):
    """spec.tls: the CA in `lime-ca`, the pods' certificates in `lime-tls` (mounted by the
    StatefulSet); a scale-up adds the new pod's certificate, the others keep theirs."""
    import base64

    from cryptography import x509

    create(api, namespace, nodes=3, tls={"enabled": True})
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)

    def data(name: str) -> dict[str, str]:
        secret = core.read_namespaced_secret(name, namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def secret_keys(name: str, want: set[str]):
        try:
            got = data(name)
        except ApiException:
            return None
        return got if want <= set(got) else None

    pods3 = {f"lime-{i}.{ext}" for i in range(3) for ext in ("crt", "key")}
    tls3 = wait_for(
        lambda: secret_keys("lime-tls", pods3 | {"ca.crt"}),
        timeout=60,
        what=lambda: f"lime-tls (operator log:\n{operator.log_tail()})",
    )
    ca = data("lime-ca")
    assert tls3["ca.crt"] == ca["ca.crt"] and "ca.key" not in tls3
    cert = x509.load_pem_x509_certificate(tls3["lime-1.crt"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca["ca.crt"].encode()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"lime-1.lime-headless.{namespace}.svc" in names.get_values_for_type(x509.DNSName)
    sts = wait_for(lambda: apps.read_namespaced_stateful_set("lime", namespace), timeout=60)
    volumes = {v.name: v for v in sts.spec.template.spec.volumes}
    assert volumes["tls"].secret.secret_name == "lime-tls"

    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, P, "lime", {"spec": {"nodes": 4}}
    )
    tls4 = wait_for(
        lambda: secret_keys("lime-tls", {"lime-3.crt", "lime-3.key"}),
        timeout=60,
        what=lambda: f"lime-3's certificate (operator log:\n{operator.log_tail()})",
    )
    assert all(tls4[k] == v for k, v in tls3.items())
