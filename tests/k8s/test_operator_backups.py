"""LimeBackup, LimeBackupSchedule and spec.restoreFrom on a real control plane, with the
operator running under the chart's RBAC: the API server enforces the CRDs' rules; a schedule
creates LimeBackups it owns on time, skips a run while the previous backup has not finished,
and reports an invalid schedule. No pod runs here (no kubelet), so a backup stays Pending and
says why; backups that complete run on real pods (test_pods_backup.py)."""

from __future__ import annotations

import json

import kubernetes
import pytest
from k8swait import wait_for
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.k8s

G, V = "limedb.io", "v1alpha1"
S3 = {"bucket": "b", "endpoint": "http://127.0.0.1:1", "credentialsSecret": {"name": "s3"}}


def create(api, namespace, plural, kind, name, spec):
    body = {"apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, namespace, plural, body
    )


def get(api, namespace, plural, name):
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        G, V, namespace, plural, name
    )


def rejected(call) -> str:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 422, err.value.body
    return json.loads(err.value.body)["message"]


def test_the_crds_refuse_what_cannot_work(api, crd, namespace):
    lime = {"nodes": 1, "replicationFactor": 1}
    both = {"backup": "x", "s3": S3}
    msg = rejected(lambda: create(api, namespace, "limeclusters", "LimeCluster", "a",
                                  {**lime, "restoreFrom": both}))  # fmt: skip
    assert "exactly one of backup" in msg
    msg = rejected(lambda: create(api, namespace, "limeclusters", "LimeCluster", "b",
                                  {**lime, "restoreFrom": {"backup": "x", "backupId": "y"}}))  # fmt: skip
    assert "backupId goes with restoreFrom.s3" in msg
    create(api, namespace, "limeclusters", "LimeCluster", "c", {**lime, "restoreFrom": {"s3": S3}})
    patch = {"spec": {"restoreFrom": {"s3": {**S3, "prefix": "other"}}}}
    msg = rejected(lambda: kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, "limeclusters", "c", patch))  # fmt: skip
    assert "restoreFrom is immutable" in msg
    create(api, namespace, "limebackups", "LimeBackup", "bk", {"cluster": "c", "s3": S3})
    msg = rejected(lambda: kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, "limebackups", "bk", {"spec": {"cluster": "d"}}))  # fmt: skip
    assert "immutable" in msg
    msg = rejected(lambda: create(api, namespace, "limebackupschedules", "LimeBackupSchedule",
                                  "s", {"cluster": "c", "schedule": "@daily", "keepLast": 0,
                                        "s3": S3}))  # fmt: skip
    assert "keepLast" in msg


def test_a_schedule_creates_owned_backups_skips_while_one_is_unfinished_and_flags_bad_cron(
    api, namespace, operator
):
    core = kubernetes.client.CoreV1Api(api)
    schedule = create(api, namespace, "limebackupschedules", "LimeBackupSchedule", "often",
                      {"cluster": "lime", "schedule": "@every 10s", "keepLast": 1, "s3": S3})  # fmt: skip

    def made():
        listed = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
            G, V, namespace, "limebackups", label_selector="limedb.io/backup-schedule=often"
        )
        return listed["items"]

    (backup,) = wait_for(made, timeout=60, interval=0.5,
                         what=lambda: f"a scheduled LimeBackup; log:\n{operator.log_tail()}")  # fmt: skip
    owner = backup["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("LimeBackupSchedule", schedule["metadata"]["uid"])
    assert backup["spec"] == {"cluster": "lime", "s3": schedule["spec"]["s3"]}
    # No LimeCluster "lime" here: the backup waits, saying why, and is never started.
    name = backup["metadata"]["name"]
    st = wait_for(lambda: get(api, namespace, "limebackups", name).get("status"), timeout=30,
                  what="the LimeBackup's status")  # fmt: skip
    assert st["phase"] == "Pending" and "lime" in st["message"], st
    # The next run comes while that one is unfinished: skipped, no second backup.

    def skipped():
        listed = core.list_namespaced_event(namespace, field_selector="involvedObject.name=often")
        return any(e.reason == "Skipped" for e in listed.items)

    wait_for(skipped, timeout=60, interval=0.5, what="a Skipped run")
    assert len(made()) == 1
    sched = get(api, namespace, "limebackupschedules", "often")["status"]
    assert sched["lastScheduleTime"] < sched["nextScheduleTime"] and sched["active"] == 1

    create(api, namespace, "limebackupschedules", "LimeBackupSchedule", "bad",
           {"cluster": "lime", "schedule": "61 * * * *", "s3": S3})  # fmt: skip

    def invalid():
        st = get(api, namespace, "limebackupschedules", "bad").get("status") or {}
        valid = next((c for c in st.get("conditions", []) if c["type"] == "Valid"), None)
        return valid and valid["status"] == "False" and valid

    valid = wait_for(invalid, timeout=30, interval=0.5, what="Valid=False on the bad schedule")
    assert "minute: 61 is outside 0-59" in valid["message"]
