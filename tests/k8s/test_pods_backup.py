"""Issue 14, acceptance 5, on real pods of the real image: a LimeBackup of a running 3-node
LimeCluster holding 3,000 keys, then a new LimeCluster (1 node, RF 1: another size) with
`restoreFrom` that backup reads every key back; a LimeBackupSchedule (`@every 10s`, keepLast
2) makes backups and prunes the oldest from the bucket and from the API.

The bucket is real: SeaweedFS (`weed server -s3`) on the node's bridge address, which the pods
and the operator pod reach; credentials come from a Secret. The schedule runs while the
restored cluster comes up, so the module waits once for both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from k8swait import wait_for
from lime_pods import (
    converged,
    current_image,
    delete_clusters,
    install_operator,
    lime_manifest,
    run_client,
)
from realkube import ROOT, RealKube
from support.s3 import S3Server, start_s3_server

pytestmark = pytest.mark.k8s

KEYS = 3000
BUCKET = "lime-backups"
CREDENTIALS = "s3-credentials"


def node_ip(kube: RealKube) -> str:
    """The node's InternalIP: the bridge address the pods route to (scripts/kube-env.sh)."""
    node = kube.kubectl_json("get", "node")["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


@pytest.fixture(scope="module")
def s3_on_node(kube: RealKube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3-node"), host=node_ip(kube))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ns(kube: RealKube, s3_on_node: S3Server) -> Iterator[str]:
    current_image(kube)
    # helm installs a chart's CRDs only when they are missing: apply this tree's.
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    name = kube.namespace("bak")
    install_operator(kube, name)
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": CREDENTIALS},
        "stringData": {"AWS_ACCESS_KEY_ID": s3_on_node.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3_on_node.secret_key},
    }), name)  # fmt: skip
    yield name
    kube.kubectl("-n", name, "delete", "limebackupschedule,limebackup", "--all", check=False)
    delete_clusters(kube, name)
    kube.delete_namespace(name, wait=False)


def s3_spec(server: S3Server, prefix: str) -> dict:
    return {"bucket": BUCKET, "prefix": prefix, "endpoint": server.endpoint,
            "credentialsSecret": {"name": CREDENTIALS}}  # fmt: skip


def limebackup(name: str, s3: dict) -> str:
    return json.dumps({"apiVersion": "limedb.io/v1alpha1", "kind": "LimeBackup",
                       "metadata": {"name": name}, "spec": {"cluster": "lime", "s3": s3}})  # fmt: skip


def status_of(kube: RealKube, ns: str, kind: str, name: str) -> dict:
    return kube.kubectl_json("-n", ns, "get", kind, name).get("status") or {}


def finished(kube: RealKube, ns: str, name: str, timeout: float = 120) -> dict:
    """The status of LimeBackup `name` once Completed; AssertionError if it Failed."""

    def done():
        st = status_of(kube, ns, "limebackup", name)
        assert st.get("phase") != "Failed", st
        return st.get("phase") == "Completed" and st

    return wait_for(done, timeout=timeout, interval=1.0,
                    what=lambda: f"LimeBackup {name} Completed: {status_of(kube, ns, 'limebackup', name)}")  # fmt: skip


def manifests_in(server: S3Server, prefix: str) -> dict[str, dict]:
    s3 = server.client()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/backups/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1].removesuffix(".json"):
            json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
            for o in listed}  # fmt: skip


def reasons(kube: RealKube, ns: str, kind: str) -> list[str]:
    listed = kube.kubectl_json("-n", ns, "get", "events",
                               "--field-selector", f"involvedObject.kind={kind}")  # fmt: skip
    return [e["reason"] for e in listed["items"]]


def test_backup_restore_into_a_new_cluster_and_a_pruning_schedule(
    kube: RealKube, ns: str, s3_on_node: S3Server
):
    kube.apply(lime_manifest(), ns)
    converged(kube, ns, 3)
    run_client(kube, ns, "write", nodes=1, keys=KEYS)

    kube.apply(limebackup("first", s3_spec(s3_on_node, "manual")), ns)
    st = finished(kube, ns, "first")
    assert st["progress"] == "100%" and st["bytesTotal"] > 0 and st["size"], st
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == {"Complete": "True", "Failed": "False"}, st
    assert {"Started", "Completed"} <= set(reasons(kube, ns, "LimeBackup"))
    (backup_id,) = manifests_in(s3_on_node, "manual")
    assert st["backupId"] == backup_id
    row = kube.kubectl("-n", ns, "get", "limebackup", "first").stdout
    assert "Completed" in row and backup_id in row, row

    # The restore and the schedule run together (the module's one wait).
    kube.apply(lime_manifest("restored", nodes=1, replicationFactor=1,
                             restoreFrom={"backup": "first"}), ns)  # fmt: skip
    kube.apply(json.dumps({
        "apiVersion": "limedb.io/v1alpha1", "kind": "LimeBackupSchedule",
        "metadata": {"name": "often"},
        "spec": {"cluster": "lime", "schedule": "@every 10s", "keepLast": 2,
                 "s3": s3_spec(s3_on_node, "scheduled")},
    }), ns)  # fmt: skip

    def restored():
        restore = status_of(kube, ns, "lime", "restored").get("restore") or {}
        assert restore.get("phase") != "Failed", restore
        return restore.get("phase") == "Completed" and restore

    restore = wait_for(restored, timeout=240, interval=1.0,
                       what=lambda: f"restore Completed: {status_of(kube, ns, 'lime', 'restored')}")  # fmt: skip
    assert restore["backupId"] == backup_id and restore["starts"] == 1, restore
    obj = converged(kube, ns, 1, name="restored")
    restored_cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Restored")
    assert restored_cond["status"] == "True", obj["status"]
    log = run_client(kube, ns, "read", nodes=1, cluster="restored", keys=KEYS)
    assert f"read {KEYS}/{KEYS}" in log, log
    # The restore stopped no pod of either cluster.
    for pod in kube.kubectl_json("-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=limedb")[
        "items"
    ]:
        assert all(c["restartCount"] == 0 for c in pod["status"]["containerStatuses"]), pod[
            "metadata"
        ]["name"]

    def pruned():
        if "Pruned" not in reasons(kube, ns, "LimeBackupSchedule"):
            return False
        objs = kube.kubectl_json("-n", ns, "get", "limebackup",
                                 "-l", "limedb.io/backup-schedule=often")["items"]  # fmt: skip
        done = {o["status"]["backupId"]: o for o in objs
                if (o.get("status") or {}).get("phase") == "Completed"}  # fmt: skip
        stored = manifests_in(s3_on_node, "scheduled")
        return len(done) == 2 and set(stored) == set(done) and (stored, objs)

    stored, objs = wait_for(pruned, timeout=120, interval=1.0,
                            what=lambda: f"2 scheduled backups kept: {status_of(kube, ns, 'limebackupschedule', 'often')}")  # fmt: skip
    scheduled = reasons(kube, ns, "LimeBackupSchedule")
    assert scheduled.count("Scheduled") >= 3, scheduled
    sched = status_of(kube, ns, "limebackupschedule", "often")
    assert sched["lastScheduleTime"] and sched["nextScheduleTime"] > sched["lastScheduleTime"]
    # Pruning kept every table the kept backups reference (they stay restorable).
    s3 = s3_on_node.client()
    for manifest in stored.values():
        for node in manifest["nodes"].values():
            for table in node["tables"]:
                s3.head_object(Bucket=BUCKET, Key=f"scheduled/tables/{table['sha256']}")
    # The manual backup is not the schedule's: never pruned.
    assert set(manifests_in(s3_on_node, "manual")) == {backup_id}
