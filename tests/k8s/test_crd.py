"""The LimeCluster CRD on a real kube-apiserver: defaults, validation, status, columns, scale."""

from __future__ import annotations

import json

import kubernetes
import pytest
from kubernetes.client.rest import ApiException
from limedb_operator.kube import request

pytestmark = pytest.mark.k8s

G, V, P = "limedb.io", "v1alpha1", "limeclusters"


def lime(name: str, **spec) -> dict:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "LimeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def objects(api, crd):
    return kubernetes.client.CustomObjectsApi(api)


def rejection(call) -> str:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 422, err.value.body
    return json.loads(err.value.body)["message"]


def test_defaults_are_filled_in_by_the_api_server(objects, namespace):
    got = objects.create_namespaced_custom_object(G, V, namespace, P, lime("a"))
    spec = got["spec"]
    assert spec["nodes"] == 3 and spec["replicationFactor"] == 3
    assert spec["vnodes"] == 256 and spec["durability"] == "sync"
    assert spec["consistency"] == "quorum"
    assert spec["storage"] == {"size": "10Gi"}
    assert spec["pvcRetention"] == {"whenScaled": "Delete", "whenDeleted": "Retain"}


def test_negative_nodes_are_rejected_with_a_readable_message(objects, namespace):
    msg = rejection(
        lambda: objects.create_namespaced_custom_object(G, V, namespace, P, lime("b", nodes=-1))
    )
    assert "spec.nodes" in msg and "greater than or equal to 0" in msg


def test_nodes_below_replication_factor_are_rejected_on_create(objects, namespace):
    body = lime("c", nodes=2, replicationFactor=3)
    msg = rejection(lambda: objects.create_namespaced_custom_object(G, V, namespace, P, body))
    assert "spec.nodes must be at least spec.replicationFactor" in msg


def test_an_update_below_rf_is_admitted_for_the_operator_to_refuse(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("c2", nodes=3))
    got = objects.patch_namespaced_custom_object(G, V, namespace, P, "c2", {"spec": {"nodes": 2}})
    assert got["spec"]["nodes"] == 2


def test_storage_may_grow_but_not_shrink(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("d", storage={"size": "2Gi"}))
    grown = objects.patch_namespaced_custom_object(
        G, V, namespace, P, "d", {"spec": {"storage": {"size": "3Gi"}}}
    )
    assert grown["spec"]["storage"]["size"] == "3Gi"
    msg = rejection(
        lambda: objects.patch_namespaced_custom_object(
            G, V, namespace, P, "d", {"spec": {"storage": {"size": "1Gi"}}}
        )
    )
    assert "storage.size may only grow: 3Gi -> 1Gi" in msg


def test_invalid_enum_and_quantity_are_rejected(objects, namespace):
    msg = rejection(
        lambda: objects.create_namespaced_custom_object(
            G, V, namespace, P, lime("e", durability="maybe")
        )
    )
    assert "spec.durability" in msg and "sync" in msg
    msg = rejection(
        lambda: objects.create_namespaced_custom_object(
            G, V, namespace, P, lime("e2", storage={"size": "lots"})
        )
    )
    assert "storage.size must be a positive quantity" in msg


def test_vnodes_and_storage_class_are_immutable(objects, namespace):
    objects.create_namespaced_custom_object(
        G, V, namespace, P, lime("f", storage={"size": "1Gi", "storageClassName": "fast"})
    )
    msg = rejection(
        lambda: objects.patch_namespaced_custom_object(
            G, V, namespace, P, "f", {"spec": {"vnodes": 8}}
        )
    )
    assert "vnodes is immutable" in msg
    msg = rejection(
        lambda: objects.patch_namespaced_custom_object(
            G, V, namespace, P, "f", {"spec": {"storage": {"storageClassName": "slow"}}}
        )
    )
    assert "storageClassName is immutable" in msg


FULL_STATUS = {
    "observedGeneration": 1,
    "nodes": 4,
    "readyNodes": 3,
    "selector": "app.kubernetes.io/name=limedb,app.kubernetes.io/instance=g",
    "phase": "ScalingDown",
    "ringEpoch": 12,
    "members": [
        {"pod": "g-0", "nodeId": "g-0", "state": "Normal"},
        {"pod": "g-3", "nodeId": "g-3", "state": "Leaving"},
    ],
    "migration": {
        "kind": "leave",
        "node": "g-3",
        "phase": "streaming",
        "rangesMoved": 5,
        "rangesTotal": 9,
        "startedAt": "2026-01-01T00:00:00Z",
    },
    "lastVerification": {
        "epoch": 11,
        "rangesChecked": 40,
        "rangesRepaired": 2,
        "keysRepaired": 12,
        "result": "repaired",
        "finishedAt": "2026-01-01T00:00:00Z",
    },
    "conditions": [
        {
            "type": "Rebalancing",
            "status": "True",
            "reason": "Migrating",
            "message": "leave of g-3",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def test_status_fields_survive_without_pruning(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("g", nodes=4))
    objects.patch_namespaced_custom_object_status(G, V, namespace, P, "g", {"status": FULL_STATUS})
    got = objects.get_namespaced_custom_object(G, V, namespace, P, "g")
    assert got["status"] == FULL_STATUS


def test_a_verification_result_outside_ok_repaired_failed_is_rejected(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("v"))
    bad = {"status": {"lastVerification": {**FULL_STATUS["lastVerification"], "result": "fine"}}}
    message = rejection(
        lambda: objects.patch_namespaced_custom_object_status(G, V, namespace, P, "v", bad)
    )
    assert "lastVerification.result" in message


def test_status_cannot_be_changed_through_the_main_resource(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("h"))
    objects.patch_namespaced_custom_object(
        G, V, namespace, P, "h", {"status": {"phase": "Running"}}
    )
    got = objects.get_namespaced_custom_object(G, V, namespace, P, "h")
    assert "status" not in got


def test_printer_columns_show_nodes_ready_phase_epoch_age(api, objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("g", nodes=4))
    objects.patch_namespaced_custom_object_status(G, V, namespace, P, "g", {"status": FULL_STATUS})
    # What `kubectl get lime` asks for: the server-side Table rendering.
    table = request(
        api,
        "GET",
        f"/apis/{G}/{V}/namespaces/{namespace}/{P}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Nodes", "Ready", "Phase", "Epoch", "Age"]
    (row,) = table["rows"]
    assert row["cells"][:5] == ["g", 4, 3, "ScalingDown", 12]


def test_short_name_lime_is_registered(api, crd):
    resources = kubernetes.client.CustomObjectsApi(api).get_api_resources(G, V)
    (res,) = [r for r in resources.resources if r.name == P]
    assert res.short_names == ["lime"]


def test_scale_subresource_reads_and_writes_spec_nodes(objects, namespace):
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("s", nodes=3))
    objects.patch_namespaced_custom_object_status(
        G, V, namespace, P, "s", {"status": {"nodes": 3, "selector": "app=x"}}
    )
    scale = objects.get_namespaced_custom_object_scale(G, V, namespace, P, "s")
    assert scale["spec"]["replicas"] == 3
    assert scale["status"] == {"replicas": 3, "selector": "app=x"}
    objects.patch_namespaced_custom_object_scale(G, V, namespace, P, "s", {"spec": {"replicas": 5}})
    got = objects.get_namespaced_custom_object(G, V, namespace, P, "s")
    assert got["spec"]["nodes"] == 5


def test_tls_needs_its_secret_for_issuer_secret_name_and_cannot_be_switched_later(
    objects, namespace
):
    body = lime("tls-a", tls={"enabled": True, "issuer": "secretName"})
    msg = rejection(lambda: objects.create_namespaced_custom_object(G, V, namespace, P, body))
    assert "spec.tls.issuer secretName needs spec.tls.secretName" in msg
    got = objects.create_namespaced_custom_object(
        G, V, namespace, P, lime("tls-b", tls={"enabled": True})
    )
    assert got["spec"]["tls"] == {"enabled": True}
    for enabled in (False, None):
        msg = rejection(
            lambda e=enabled: objects.patch_namespaced_custom_object(
                G, V, namespace, P, "tls-b", {"spec": {"tls": {"enabled": e}}}
            )
        )
        assert "spec.tls.enabled cannot change on an existing cluster" in msg
    objects.create_namespaced_custom_object(G, V, namespace, P, lime("tls-c"))
    msg = rejection(
        lambda: objects.patch_namespaced_custom_object(
            G, V, namespace, P, "tls-c", {"spec": {"tls": {"enabled": True}}}
        )
    )
    assert "spec.tls.enabled cannot change on an existing cluster" in msg
