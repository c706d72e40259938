"""The objects generated for a LimeCluster run a safe, restricted, self-identifying node."""

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from limedb.config import SETTINGS
from limedb_operator import manifests

NAME, NS = "lime", "db"


def _sts(spec=None, replicas=3):
    return manifests.statefulset(NAME, NS, manifests.with_defaults(spec or {}), replicas)


def _env(sts):
    return {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_statefulset_replicas_come_from_the_operator_not_from_spec_nodes():
    sts = _sts({"nodes": 5}, replicas=3)
    assert sts["spec"]["replicas"] == 3


def test_statefulset_uses_parallel_pods_and_the_headless_service():
    spec = _sts()["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "lime-headless"
    assert spec["selector"]["matchLabels"] == manifests.selector_labels(NAME)
    assert set(spec["selector"]["matchLabels"].items()) <= set(
        spec["template"]["metadata"]["labels"].items()
    )


def test_node_identity_is_the_stable_dns_url_of_the_pod():
    env = _env(_sts())
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    url = "http://$(POD_NAME).lime-headless.db.svc:8484"
    assert env["LIMEDB_ADVERTISE_URL"]["value"] == url
    assert env["LIMEDB_NODE_ID"]["value"] == "$(LIMEDB_ADVERTISE_URL)"
    assert manifests.pod_of_node(manifests.node_url(NAME, NS, 4)) == "lime-4"


def test_seeds_are_the_founding_pods_and_do_not_follow_spec_nodes():
    env = _env(_sts({"nodes": 7}, replicas=7))
    assert env["LIMEDB_SEEDS"]["value"].split(",") == [
        f"http://lime-{i}.lime-headless.db.svc:8484" for i in range(7)
    ]
    later = _env(manifests.statefulset(NAME, NS, manifests.with_defaults({"nodes": 5}), 5, 3))
    assert later["LIMEDB_SEEDS"]["value"].split(",") == [
        f"http://lime-{i}.lime-headless.db.svc:8484" for i in range(3)
    ]


def _entrypoint_await_join(pod: str, seeds: str, data_dir: str = "/nonexistent") -> str:
    env = {
        "LIMEDB_SEEDS": seeds,
        "LIMEDB_ADVERTISE_URL": f"http://{pod}.lime-headless.db.svc:8484",
        "LIMEDB_DATA_DIR": data_dir,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    # Run the real entrypoint with `limedb serve` replaced by a probe of the decision it made.
    script = manifests.NODE_ENTRYPOINT.replace("exec limedb serve", 'echo "$LIMEDB_AWAIT_JOIN"')
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.mark.process
def test_founders_boot_the_static_ring_and_later_pods_wait_to_be_joined():
    # Unresolvable seeds: nobody has a ring yet, as at the cluster's birth.
    seeds = ",".join(manifests.seed_urls(NAME, NS, 3))
    assert _entrypoint_await_join("lime-0", seeds) == "false"
    assert _entrypoint_await_join("lime-2", seeds) == "false"
    assert _entrypoint_await_join("lime-3", seeds) == "true"
    assert _entrypoint_await_join("lime-1", manifests.seed_urls(NAME, NS, 1)[0]) == "true"


class _RingWithoutLime1(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = json.dumps(
            {"epoch": 7, "members": [{"node_id": "http://lime-0.lime-headless.db.svc:8484"}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.process
def test_a_recreated_founder_waits_to_be_joined_when_the_ring_left_it_out(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RingWithoutLime1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        live_seed = f"http://127.0.0.1:{server.server_port}"
        me = "http://lime-1.lime-headless.db.svc:8484"
        assert _entrypoint_await_join("lime-1", f"{live_seed},{me}") == "true"
        # ...unless its volume holds a ring record: then it resumes from that record.
        (tmp_path / "ring.json").write_text("{}")
        assert _entrypoint_await_join("lime-1", f"{live_seed},{me}", str(tmp_path)) == "false"
    finally:
        server.shutdown()
        server.server_close()


def test_every_limedb_variable_is_a_setting_the_node_accepts():
    # limedb.config refuses to start on an unknown LIMEDB_* variable.
    known = {s.env for s in SETTINGS}
    env = _env(_sts({"env": [{"name": "LIMEDB_LOG_LEVEL", "value": "debug"}]}))
    ours = {n for n in env if n.startswith("LIMEDB_")}
    assert ours <= known, ours - known


def test_spec_settings_reach_the_node_environment():
    env = _env(
        _sts({"replicationFactor": 2, "vnodes": 16, "durability": "periodic", "consistency": "one"})
    )
    assert env["LIMEDB_REPLICATION_FACTOR"]["value"] == "2"
    assert env["LIMEDB_VNODES"]["value"] == "16"
    assert env["LIMEDB_DURABILITY"]["value"] == "periodic"
    assert env["LIMEDB_READ_CONSISTENCY"]["value"] == "one"
    assert env["LIMEDB_WRITE_CONSISTENCY"]["value"] == "one"
    assert env["LIMEDB_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "lime-secret",
        "key": "cluster-secret",
    }


def test_pods_get_a_generated_resp_password_that_is_not_the_cluster_secret():
    env = _env(_sts())
    resp = env["LIMEDB_RESP_PASSWORD"]["valueFrom"]["secretKeyRef"]
    cluster = env["LIMEDB_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
    assert resp == {"name": "lime-resp-password", "key": "password"}
    assert resp["name"] != cluster["name"]
    made = manifests.generated_secret("resp", NAME, NS, "tok")
    assert made["kind"] == "Secret" and made["metadata"]["name"] == resp["name"]
    assert made["metadata"]["namespace"] == NS
    assert made["stringData"] == {resp["key"]: "tok"}
    assert (
        manifests.generated_secret("cluster", NAME, NS, "tok")["metadata"]["name"]
        == (cluster["name"])
    )
    # The node binds every interface, so without this password it would deny other pods.
    assert env["LIMEDB_HOST"]["value"] == "0.0.0.0"
    # A user cannot swap in a password of their own through spec.env either.
    user = _env(_sts({"env": [{"name": "LIMEDB_RESP_PASSWORD", "value": "weak"}]}))
    assert user["LIMEDB_RESP_PASSWORD"] == env["LIMEDB_RESP_PASSWORD"]


def test_user_env_is_added_but_cannot_override_identity():
    env = _env(
        _sts(
            {
                "env": [
                    {"name": "LIMEDB_NODE_ID", "value": "evil"},
                    {"name": "LIMEDB_LOG_LEVEL", "value": "debug"},
                ]
            }
        )
    )
    assert env["LIMEDB_NODE_ID"]["value"] == "$(LIMEDB_ADVERTISE_URL)"
    assert env["LIMEDB_LOG_LEVEL"]["value"] == "debug"


def test_pod_meets_the_restricted_pod_security_profile():
    pod = _sts()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert mounts["/data"] == "data"


def test_probes_hit_livez_and_readyz():
    (c,) = _sts()["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"


def test_volume_claim_template_carries_size_class_and_retention_policy():
    sts = _sts(
        {
            "storage": {"size": "20Gi", "storageClassName": "fast"},
            "pvcRetention": {"whenScaled": "Retain", "whenDeleted": "Delete"},
        }
    )
    (tpl,) = sts["spec"]["volumeClaimTemplates"]
    assert tpl["metadata"]["name"] == "data"
    assert tpl["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert tpl["spec"]["storageClassName"] == "fast"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain",
        "whenDeleted": "Delete",
    }
    assert manifests.pvc_name(NAME, 4) == "data-lime-4"


def test_placement_is_copied_and_default_spreads_over_zones():
    default = _sts()["spec"]["template"]["spec"]
    keys = [c["topologyKey"] for c in default["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    placed = _sts(
        {
            "placement": {
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "db", "operator": "Exists"}],
                "topologySpreadConstraints": [],
            }
        }
    )["spec"]["template"]["spec"]
    assert placed["nodeSelector"] == {"disk": "ssd"}
    assert placed["tolerations"] == [{"key": "db", "operator": "Exists"}]
    assert placed["topologySpreadConstraints"] == []


def test_headless_service_publishes_not_ready_addresses():
    svc = manifests.headless_service(NAME, NS, {})
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_the_two_services_say_which_is_which_for_the_service_monitor():
    headless = manifests.headless_service(NAME, NS, {})["metadata"]["labels"]
    client = manifests.client_service(NAME, NS)["metadata"]["labels"]
    assert headless[manifests.SERVICE_ROLE_LABEL] == "headless"
    assert client[manifests.SERVICE_ROLE_LABEL] == "client"
    # The pods' own labels are untouched (the selectors do not change).
    assert manifests.SERVICE_ROLE_LABEL not in manifests.labels(NAME)


def test_client_service_and_pdb_select_the_node_pods():
    svc = manifests.client_service(NAME, NS)
    pdb = manifests.pod_disruption_budget(NAME, NS)
    assert svc["spec"]["selector"] == manifests.selector_labels(NAME)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == manifests.selector_labels(NAME)


def test_ordinal_of_recognises_only_this_clusters_pods():
    assert manifests.ordinal_of(NAME, "lime-12") == 12
    assert manifests.ordinal_of(NAME, "limex-1") is None
    assert manifests.ordinal_of(NAME, "lime-a") is None


def test_owner_reference_points_at_the_limecluster():
    ref = manifests.owner_reference({"metadata": {"name": NAME, "uid": "u-1"}})
    assert ref["kind"] == "LimeCluster" and ref["uid"] == "u-1" and ref["controller"] is True


def test_defaults_fill_missing_nested_fields_only():
    spec = manifests.with_defaults({"storage": {"size": "1Gi"}, "nodes": 5})
    assert spec["storage"] == {"size": "1Gi"}
    assert spec["nodes"] == 5
    assert spec["pvcRetention"] == {"whenScaled": "Delete", "whenDeleted": "Retain"}
