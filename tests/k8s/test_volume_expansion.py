"""Raising storage.size grows every member's volume claim on a real control plane, a member
created later is grown too, and an API refusal (no allowVolumeExpansion) shows in status.

The claims are bound for real: each test pre-creates PersistentVolumes (hostPath) with a
claimRef, which kube-controller-manager's PV binder binds to the StatefulSet's claims. No
database runs (pods stay Pending): volume expansion does not depend on it. There is no CSI
driver here, so after the operator's patch the "external resizer" step (grow the PV, report the
claim's new capacity) is done by `_resize_as_the_csi_resizer`, an honest stand-in.
"""

from __future__ import annotations

import kubernetes
import pytest
from k8swait import wait_for
from kubernetes.client.rest import ApiException
from lime_helpers import condition, lime, patch_spec

pytestmark = pytest.mark.k8s

G, V, P = "limedb.io", "v1alpha1", "limeclusters"


@pytest.fixture
def storage(api, namespace, tmp_path):
    """StorageClasses and PersistentVolumes (cluster-scoped) of one test, removed afterwards."""
    storage_api = kubernetes.client.StorageV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    made: list[tuple[str, str]] = []

    def storage_class(expandable: bool) -> str:
        name = f"{namespace}-{'grow' if expandable else 'fixed'}"
        storage_api.create_storage_class(
            {
                "metadata": {"name": name},
                "provisioner": "limedb.test/none",
                "allowVolumeExpansion": expandable,
                "volumeBindingMode": "Immediate",
                "reclaimPolicy": "Retain",
            }
        )
        made.append(("sc", name))
        return name

    def volume(claim: str, size: str, sc: str) -> None:
        name = f"{namespace}-{claim}"
        core.create_persistent_volume(
            {
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": sc,
                    "hostPath": {"path": str(tmp_path / claim)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        made.append(("pv", name))

    yield storage_class, volume
    for kind, name in reversed(made):
        try:
            if kind == "pv":
                core.delete_persistent_volume(name)
            else:
                storage_api.delete_storage_class(name)
        except ApiException as e:
            if e.status != 404:
                raise


def _create(api, namespace, nodes, size, sc):
    spec = {"nodes": nodes, "replicationFactor": min(nodes, 3)}
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "LimeCluster",
        "metadata": {"name": "lime"},
        "spec": {**spec, "storage": {"size": size, "storageClassName": sc}},
    }
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, namespace, P, body
    )


def _claims(api, namespace):
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace)
    return {c.metadata.name: c for c in listed.items}


def _bound(api, namespace, names):
    claims = _claims(api, namespace)
    return all(n in claims and claims[n].status.phase == "Bound" for n in names) and claims


def _requests(api, namespace):
    return {n: c.spec.resources.requests["storage"] for n, c in _claims(api, namespace).items()}


def _volume_condition(api, namespace, reason):
    c = condition(lime(api, namespace), "VolumesResized") or {}
    return c if c.get("reason") == reason else None


def _events(api, namespace):
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.kind=LimeCluster"
    )
    return [(e.type, e.reason, e.message) for e in listed.items]


def _resize_as_the_csi_resizer(api, namespace, claim, size, fs_pending=False):
    """What external-resizer (and, for the filesystem, the kubelet) do after the claim's request
    grew: the PV gets the new capacity, then the claim's status reports it."""
    core = kubernetes.client.CoreV1Api(api)
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    core.patch_persistent_volume(pvc.spec.volume_name, {"spec": {"capacity": {"storage": size}}})
    status = (
        {
            "conditions": [
                {
                    "type": "FileSystemResizePending",
                    "status": "True",
                    "message": "Waiting for user to (re-)start a pod",
                }
            ]
        }  # fmt: skip
        if fs_pending
        else {"capacity": {"storage": size}, "conditions": None}
    )
    core.patch_namespaced_persistent_volume_claim_status(claim, namespace, {"status": status})


def test_raising_storage_size_grows_every_member_claim_and_later_members(
    api, namespace, operator, storage
):
    storage_class, volume = storage
    sc = storage_class(expandable=True)
    members = [f"data-lime-{i}" for i in range(3)]
    for claim in members:
        volume(claim, "1Gi", sc)
    _create(api, namespace, 3, "1Gi", sc)
    wait_for(lambda: _bound(api, namespace, members), timeout=60, what="3 claims bound")
    wait_for(lambda: _volume_condition(api, namespace, "Resized"), timeout=30,
             what=lambda: f"VolumesResized; operator:\n{operator.log_tail()}")  # fmt: skip

    patch_spec(api, namespace, {"storage": {"size": "2Gi"}})
    wait_for(
        lambda: _requests(api, namespace) == dict.fromkeys(members, "2Gi"),
        timeout=30,
        what=lambda: f"claims requesting 2Gi: {_requests(api, namespace)}",
    )
    resizing = wait_for(lambda: _volume_condition(api, namespace, "Resizing"), timeout=30)
    assert resizing["status"] == "False"
    for claim in members:
        assert f"{claim} 1Gi -> requested 2Gi" in resizing["message"]
    got = _events(api, namespace)
    for claim in members:
        assert ("Normal", "VolumeResizing", f"{claim} requests 2Gi") in got

    # The volumes grow (one needs its filesystem grown by the kubelet first): status follows.
    _resize_as_the_csi_resizer(api, namespace, "data-lime-0", "2Gi", fs_pending=True)
    wait_for(
        lambda: "FileSystemResizePending" in (condition(lime(api, namespace), "VolumesResized")
                                              or {}).get("message", ""),
        timeout=30,
        what="the pending filesystem resize in the condition",
    )  # fmt: skip
    for claim in members:
        _resize_as_the_csi_resizer(api, namespace, claim, "2Gi")
    done = wait_for(lambda: _volume_condition(api, namespace, "Resized"), timeout=30)
    assert done["status"] == "True" and "2Gi" in done["message"]
    wait_for(
        lambda: any(r == "VolumesResized" for _, r, _ in _events(api, namespace)),
        timeout=30,
        what="the VolumesResized event",
    )

    # A member added now comes from the StatefulSet's old (immutable) template at 1Gi; the
    # operator grows its claim once it is bound.
    volume("data-lime-3", "1Gi", sc)
    patch_spec(api, namespace, {"nodes": 4})
    wait_for(
        lambda: _requests(api, namespace).get("data-lime-3") == "2Gi",
        timeout=60,
        what=lambda: f"data-lime-3 requesting 2Gi: {_requests(api, namespace)}",
    )


def test_a_storage_class_without_expansion_is_reported_not_retried_blindly(
    api, namespace, operator, storage
):
    storage_class, volume = storage
    sc = storage_class(expandable=False)
    volume("data-lime-0", "1Gi", sc)
    _create(api, namespace, 1, "1Gi", sc)
    wait_for(lambda: _bound(api, namespace, ["data-lime-0"]), timeout=60, what="claim bound")

    patch_spec(api, namespace, {"storage": {"size": "2Gi"}})
    refused = wait_for(
        lambda: _volume_condition(api, namespace, "ResizeRefused"),
        timeout=30,
        what=lambda: f"ResizeRefused; operator:\n{operator.log_tail()}",
    )
    # The API server's own words (its PersistentVolumeClaimResize admission) reach the user.
    assert refused["status"] == "False"
    assert "data-lime-0" in refused["message"] and "storageclass" in refused["message"].lower()
    assert _requests(api, namespace) == {"data-lime-0": "1Gi"}
    warnings = [m for t, r, m in _events(api, namespace) if r == "VolumeResizeRefused"]
    assert warnings == [refused["message"]]

    # The reconcile loop goes on (no crash loop, no event per tick): a new size is tried and
    # refused again, with one more event.
    patch_spec(api, namespace, {"storage": {"size": "3Gi"}})
    again = wait_for(
        lambda: (
            "3Gi" in (_volume_condition(api, namespace, "ResizeRefused") or {}).get("message", "")
            and _volume_condition(api, namespace, "ResizeRefused")
        ),
        timeout=30,
        what="the refusal of 3Gi",
    )
    warnings = wait_for(
        lambda: (
            len(w := [m for _, r, m in _events(api, namespace) if r == "VolumeResizeRefused"]) == 2
            and w
        ),
        timeout=30,
        what="a second VolumeResizeRefused event",
    )
    assert sorted(warnings) == sorted([refused["message"], again["message"]])
