"""End to end on the real control plane: a LimeCluster of real `limedb serve` processes (run by
the pod runner) is created, scaled up and down by the operator, and keeps every key."""

from __future__ import annotations

import httpx
import kubernetes
import pytest
import redis
from k8swait import wait_for
from lime_helpers import (
    G,
    P,
    V,
    assert_all_keys,
    condition,
    converged,
    events,
    lime,
    patch_spec,
    pod_url,
    resp_password_of,
    secret_of,
    write_keys,
)
from limedb.client import Client

pytestmark = pytest.mark.k8s


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
    # The operator gave the pods a RESP password of their own, not the cluster secret.
    password = resp_password_of(api, namespace)
    assert password and password != secret_of(api, namespace)
    resp_host = httpx.URL(pod_url(api, namespace, 1)).host
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=resp_host, port=6379, socket_timeout=10).get("resp-key")
    authed = redis.Redis(host=resp_host, port=6379, password=password, socket_timeout=10)
    assert authed.set("resp-key", "via-resp") and authed.get("resp-key") == b"via-resp"
    authed.close()
    objects = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)

    def scale(n):
        objects.patch_namespaced_custom_object_scale(
            G, V, namespace, P, "lime", {"spec": {"replicas": n}}
        )

    # Scale up: two new pods join one at a time and receive their ranges.
    scale(5)
    seen: set[str] = set()
    obj = converged(api, namespace, 5, operator, runner, phases=seen)
    assert {"ScalingUp", "Rebalancing"} & seen, seen
    assert obj["status"]["ringEpoch"] >= 3  # one epoch per join at least
    assert_all_keys(pod_url(api, namespace, 4))
    reasons = {r for r, _ in events(api, namespace)}
    assert {"ScalingUp", "Joining"} <= reasons, reasons

    # Scale down: each leaving node hands off before its pod and (whenScaled=Delete) volume go.
    scale(3)
    seen = set()
    obj = converged(api, namespace, 3, operator, runner, phases=seen)
    assert {"ScalingDown", "Rebalancing"} & seen, seen
    assert obj["status"].get("migration") is None  # no stale progress once it is over
    assert [m["pod"] for m in obj["status"]["members"] if m["state"] == "Normal"] == [
        "lime-0",
        "lime-1",
        "lime-2",
    ]
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


def test_a_change_of_nodes_during_a_join_waits_for_it_then_converges(
    api, namespace, operator, runner
):
    objects = kubernetes.client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        G, V, namespace, P,
        {"apiVersion": f"{G}/{V}", "kind": "LimeCluster", "metadata": {"name": "lime"},
         "spec": {"nodes": 3, "replicationFactor": 3, "durability": "periodic", "vnodes": 16,
                  "env": [{"name": "LIMEDB_STREAM_MB_PER_S", "value": "1"}]}},
    )  # fmt: skip
    converged(api, namespace, 3, operator, runner)
    write_keys(pod_url(api, namespace), value_bytes=256)
    objects.patch_namespaced_custom_object_scale(
        G, V, namespace, P, "lime", {"spec": {"replicas": 5}}
    )
    lime3 = f"http://lime-3.lime-headless.{namespace}.svc:8484"

    def joining():
        members = (lime(api, namespace).get("status") or {}).get("members") or []
        return any(m["nodeId"] == lime3 and m["state"] == "Joining" for m in members)

    wait_for(joining, timeout=120, what="lime-3 Joining")
    # The user changes their mind while lime-3 is still receiving its ranges.
    objects.patch_namespaced_custom_object_scale(
        G, V, namespace, P, "lime", {"spec": {"replicas": 4}}
    )
    obj = converged(api, namespace, 4, operator, runner)
    # lime-3 finished joining; lime-4 never joined, so it was removed without a hand-off.
    normal = [m["pod"] for m in obj["status"]["members"] if m["state"] == "Normal"]
    assert normal == ["lime-0", "lime-1", "lime-2", "lime-3"]
    assert_all_keys(pod_url(api, namespace, 3), value_bytes=256)
