"""End to end on the real control plane: a LimeCluster of real `limedb serve` processes (run by
the pod runner) is created, scaled up and down by the operator, and keeps every key."""

from __future__ import annotations

import kubernetes
import pytest
from conftest import wait_for
from limedb.client import Client

pytestmark = pytest.mark.k8s

G, V, P = "limedb.io", "v1alpha1", "limeclusters"
KEYS = 20_000
BATCH = 1000


def lime(api, namespace, name="lime"):
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        G, V, namespace, P, name
    )


def patch_spec(api, namespace, spec, name="lime"):
    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, P, name, {"spec": spec}
    )


def condition(obj, kind):
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def events(api, namespace):
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.kind=LimeCluster"
    )
    return [(e.reason, e.message) for e in listed.items]


def secret_of(api, namespace):
    import base64

    s = kubernetes.client.CoreV1Api(api).read_namespaced_secret("lime-secret", namespace)
    return base64.b64decode(s.data["cluster-secret"]).decode()


def converged(api, namespace, nodes, operator, runner, timeout=240.0):
    """Wait until status says `nodes` Ready Normal members, Available, not Progressing."""

    def done():
        obj = lime(api, namespace)
        st = obj.get("status") or {}
        members = [m for m in st.get("members", []) if m["state"] == "Normal"]
        pods = (
            kubernetes.client.CoreV1Api(api)
            .list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=limedb")
            .items
        )
        ok = (
            len(pods) == nodes
            and st.get("nodes") == nodes
            and st.get("readyNodes") == nodes
            and len(members) == nodes
            and st.get("phase") == "Running"
            and (condition(obj, "Available") or {}).get("status") == "True"
        )
        return ok and obj

    return wait_for(
        done,
        timeout=timeout,
        interval=0.5,
        what=lambda: (
            f"{nodes} Normal Ready nodes; status={lime(api, namespace).get('status')}\n"
            f"operator:\n{operator.log_tail(15)}\nrunner errors: {runner.errors}"
        ),
    )


def pod_url(api, namespace, ordinal=0):
    pod = kubernetes.client.CoreV1Api(api).read_namespaced_pod(f"lime-{ordinal}", namespace)
    return f"http://{pod.status.pod_ip}:8484"


def value_of(i: int, value_bytes: int) -> str:
    return f"value-{i}-".ljust(value_bytes, "x")


def write_keys(url: str, value_bytes: int = 0) -> None:
    with Client(url, timeout=30) as c:
        for start in range(0, KEYS, BATCH):
            c.batch(put={f"key-{i}": value_of(i, value_bytes) for i in range(start, start + BATCH)})


def assert_all_keys(url: str, value_bytes: int = 0) -> None:
    missing = []
    with Client(url, timeout=30) as c:
        for start in range(0, KEYS, BATCH):
            names = [f"key-{i}" for i in range(start, start + BATCH)]
            got = c.batch(get=names)
            missing += [
                k for k in names if got.get(k) != value_of(int(k[4:]), value_bytes).encode()
            ]
    assert not missing, f"{len(missing)} keys lost, e.g. {missing[:5]}"


def test_create_scale_up_down_refuse_and_keep_every_key(api, namespace, operator, runner):
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, namespace, P,
        {"apiVersion": f"{G}/{V}", "kind": "LimeCluster", "metadata": {"name": "lime"},
         "spec": {"nodes": 3, "replicationFactor": 3, "durability": "periodic",
                  "vnodes": 16, "storage": {"size": "1Gi"}}},
    )  # fmt: skip
    converged(api, namespace, 3, operator, runner)
    write_keys(pod_url(api, namespace))
    assert_all_keys(pod_url(api, namespace, 2))
    objects = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)

    def scale(n):
        objects.patch_namespaced_custom_object_scale(
            G, V, namespace, P, "lime", {"spec": {"replicas": n}}
        )

    # Scale up: two new pods join one at a time and receive their ranges.
    scale(5)
    obj = converged(api, namespace, 5, operator, runner)
    assert obj["status"]["ringEpoch"] >= 3  # one epoch per join at least
    assert_all_keys(pod_url(api, namespace, 4))
    reasons = {r for r, _ in events(api, namespace)}
    assert {"ScalingUp", "Joining"} <= reasons, reasons

    # Scale down: each leaving node hands off before its pod and (whenScaled=Delete) volume go.
    scale(3)
    converged(api, namespace, 3, operator, runner)
    assert_all_keys(pod_url(api, namespace, 0))
    reasons = {r for r, _ in events(api, namespace)}
    assert {"Leaving", "ScalingDown"} <= reasons, reasons
    wait_for(lambda: runner.volume_dirs() == ["data-lime-0", "data-lime-1", "data-lime-2"],
             timeout=60, what=f"volumes of removed nodes deleted (runner errors: {runner.errors[-3:]})")  # fmt: skip

    # Below the replication factor: refused, visible on the object, nothing removed.
    scale(2)
    refused = wait_for(
        lambda: (c := condition(lime(api, namespace), "Valid")) and c["status"] == "False" and c,
        timeout=30,
        what="Valid=False",
    )
    assert refused["reason"] == "BelowReplicationFactor"
    assert lime(api, namespace)["status"]["phase"] == "Invalid"
    assert apps.read_namespaced_stateful_set("lime", namespace).spec.replicas == 3
    assert "BelowReplicationFactor" in {r for r, _ in events(api, namespace)}
    assert_all_keys(pod_url(api, namespace, 1))

    # RF lowered to 1 with one node: the RF change runs first, then two leaves.
    patch_spec(api, namespace, {"replicationFactor": 1, "nodes": 1})
    obj = converged(api, namespace, 1, operator, runner)
    assert condition(obj, "Valid")["status"] == "True"
    with Client(pod_url(api, namespace), cluster_secret=secret_of(api, namespace)) as c:
        assert c.admin_status()["replication_factor"] == 1
    assert "ReplicationFactor" in {r for r, _ in events(api, namespace)}
    assert_all_keys(pod_url(api, namespace, 0))

    # And back to 3 nodes (RF stays 1).
    scale(3)
    converged(api, namespace, 3, operator, runner)
    assert_all_keys(pod_url(api, namespace, 2))
