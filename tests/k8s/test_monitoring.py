"""The chart's monitoring kit (issue 17, acceptance 4): off by default; with
`monitoring.enabled=true` it renders a ServiceMonitor, a PrometheusRule with LimeDB's alerts and
the Grafana dashboard ConfigMap, every PromQL expression in them parses, and the real API server
accepts the three objects in a server-side dry run against the prometheus-operator CRDs carried
in crds/monitoring/ (v0.85.0, crds/monitoring/README.md)."""

from __future__ import annotations

import copy
import json
import re

import kubernetes
import promql_parser
import pytest
import yaml
from controlplane import ROOT
from helm import CHART, KUBE_VERSION, helm, template
from k8swait import wait_for
from kubernetes.client.rest import ApiException
from lime_helpers import create, events_for, label_selector, lime
from limedb_operator.kube import request

pytestmark = pytest.mark.k8s

MONITORING_CRDS = sorted((ROOT / "crds" / "monitoring").glob("monitoring.coreos.com_*.yaml"))
ALERTS = {
    "LimeDBVerificationRepaired",
    "LimeDBVerificationFailed",
    "LimeDBNodeDown",
    "LimeDBNodeNotScraped",
    "LimeDBQuorumAtRisk",
    "LimeDBTransitionStuck",
    "LimeDBDiskNearlyFull",
    "LimeDBDiskFull",
    "LimeDBClockOffset",
    "LimeDBClockRefusesWrites",
    "LimeDBHintsPilingUp",
    "LimeDBOverloaded",
}
PLURALS = {
    "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "ConfigMap": "configmaps",
}


@pytest.fixture(scope="session")
def monitoring_crds(api: kubernetes.client.ApiClient) -> list[str]:
    ext = kubernetes.client.ApiextensionsV1Api(api)
    names = []
    for path in MONITORING_CRDS:
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        names.append(body["metadata"]["name"])

    def established(name: str) -> bool:
        got = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in got.status.conditions or []
        )

    for name in names:
        wait_for(lambda name=name: established(name), what=f"the {name} CRD to be Established")
    return names


def monitoring_docs(namespace: str, *sets: str, json_sets: tuple[str, ...] = ()) -> dict[str, dict]:
    if json_sets:
        args = ["template", "r", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
        args += ["--set", "monitoring.enabled=true"]
        for s in sets:
            args += ["--set", s]
        for s in json_sets:
            args += ["--set-json", s]  # (--set keeps 0.2 a string)
        docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    else:
        docs = template(namespace, "monitoring.enabled=true", *sets)
    kit = {d["kind"]: d for d in docs if d["kind"] in ("ServiceMonitor", "PrometheusRule")}
    for d in docs:
        if d["kind"] == "ConfigMap" and "limedb.json" in d.get("data", {}):
            kit["ConfigMap"] = d
    return kit


def dry_run(api, doc: dict, namespace: str) -> dict:
    group_version = doc["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[doc['kind']]}/{doc['metadata']['name']}"
    return request(
        api,
        "PATCH",
        path,
        body=json.dumps(doc),
        query=[("dryRun", "All"), ("fieldManager", "limedb-test"), ("force", "true")],
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


def test_the_monitoring_kit_is_off_by_default():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in template("limedb")}
    assert not {k for k, _ in kinds} & {"ServiceMonitor", "PrometheusRule"}
    assert not any(kind == "ConfigMap" and "dashboard" in name for kind, name in kinds)


def test_alert_rules_name_every_alert_and_their_promql_parses():
    rule = monitoring_docs("limedb")["PrometheusRule"]
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        promql_parser.parse(r["expr"])  # raises ValueError on a syntax error
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert "{{ $labels." in r["annotations"]["summary"], r["alert"]
    thresholds = monitoring_docs(
        "limedb",
        "monitoring.rules.hintsPending=5",
        "monitoring.rules.transitionStuckMinutes=3",
        json_sets=("monitoring.rules.diskFreeRatio=0.2",),
    )["PrometheusRule"]
    exprs = {r["alert"]: r["expr"] for g in thresholds["spec"]["groups"] for r in g["rules"]}
    assert exprs["LimeDBDiskNearlyFull"].endswith("< 0.2")
    assert exprs["LimeDBHintsPilingUp"].endswith("> 5")
    assert "> 180" in exprs["LimeDBTransitionStuck"]


def test_the_grafana_dashboard_is_json_whose_queries_parse():
    config_map = monitoring_docs("limedb")["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["limedb.json"])
    assert dashboard["uid"] == "limedb-overview"
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 20
    metrics = set()
    for target in targets:
        expr = target["expr"].replace("$namespace", "ns").replace("$limecluster", "lime")
        promql_parser.parse(expr)
        metrics.update(re.findall(r"\blimedb_[a-z_]+", expr))
    # The panels the issue names: transitions, RESP, overload, hints, repair, clock offset.
    for wanted in (
        "limedb_transition_progress_ratio",
        "limedb_transition_bytes_streamed",
        "limedb_resp_commands_total",
        "limedb_resp_command_duration_seconds_bucket",
        "limedb_overload_refusals_total",
        "limedb_hints_pending",
        "limedb_hints_replayed_total",
        "limedb_repair_ranges_differing_total",
        "limedb_clock_offset_seconds",
    ):
        assert wanted in metrics, wanted


@pytest.mark.parametrize("variant", [(), ("operator.clusterWide=true",)], ids=["ns", "cluster"])
def test_the_api_server_accepts_the_monitoring_kit(api, monitoring_crds, namespace, variant):
    kit = monitoring_docs(namespace, *variant)
    assert set(kit) == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    monitor = kit["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"]["limedb.io/service"] == "headless"
    if variant:
        assert monitor["namespaceSelector"] == {"any": True}
    else:
        assert monitor["namespaceSelector"] == {"matchNames": [namespace]}
    for doc in kit.values():
        accepted = dry_run(api, doc, namespace)
        assert accepted["kind"] == doc["kind"]
        assert accepted["metadata"]["name"] == doc["metadata"]["name"]

    # The CRDs' schemas are really checked: a rule with a malformed duration is refused.
    broken = copy.deepcopy(kit["PrometheusRule"])
    broken["spec"]["groups"][0]["rules"][0]["for"] = "one minute"
    with pytest.raises(ApiException) as refused:
        dry_run(api, broken, namespace)
    assert refused.value.status == 422 and "for" in refused.value.body


def _selects(api, namespace: str, selector: dict) -> set[str]:
    """The Services of `namespace` a ServiceMonitor's selector picks, as the API server reads it."""
    found = kubernetes.client.CoreV1Api(api).list_namespaced_service(
        namespace, label_selector=label_selector(selector)
    )
    return {s.metadata.name for s in found.items}


def test_a_tls_cluster_gets_a_service_monitor_of_its_own_and_the_charts_leaves_it_out(
    api, crd, monitoring_crds, control_plane, namespace
):
    """The chart's ServiceMonitor scrapes over http; a cluster with spec.tls serves https under its
    own CA. The operator (with the chart's monitoring settings and permissions) gives that
    cluster a ServiceMonitor in its namespace that checks the nodes against the CA its pods
    mount, which the CRD accepts; the chart's selector leaves that cluster's Services out and
    still picks the plaintext cluster's headless one."""
    from operatorproc import OperatorProcess, install_rbac

    sets = ("monitoring.enabled=true", "monitoring.serviceMonitor.interval=30s")
    docs = template(namespace, *sets)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert "LIMEDB_SERVICE_MONITOR" in env
    token = install_rbac(api, namespace, *sets)
    proc = OperatorProcess(control_plane, namespace, token, control_plane.workdir, env)
    proc.start()
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        create(api, namespace, "plain", nodes=3)
        secure = create(api, namespace, "secure", nodes=3, tls={"enabled": True})

        def monitor() -> dict | None:
            try:
                return custom.get_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", namespace, "servicemonitors", "secure-metrics"
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        got = wait_for(monitor, what=lambda: f"secure-metrics (operator log:\n{proc.log_tail()})")
        assert [o["uid"] for o in got["metadata"]["ownerReferences"]] == [secure["metadata"]["uid"]]
        (endpoint,) = got["spec"]["endpoints"]
        assert endpoint["scheme"] == "https" and endpoint["interval"] == "30s"
        assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "secure-tls", "key": "ca.crt"}
        assert endpoint["tlsConfig"]["serverName"] == f"secure.{namespace}.svc"
        # The plaintext cluster has none (the chart's scrapes it), once a whole step of it ran.
        wait_for(lambda: lime(api, namespace, "plain").get("status"), what="plain's status")
        names = {
            i["metadata"]["name"]
            for i in custom.list_namespaced_custom_object(
                "monitoring.coreos.com", "v1", namespace, "servicemonitors"
            )["items"]
        }
        assert names == {"secure-metrics"}

        chart_monitor = monitoring_docs(namespace)["ServiceMonitor"]["spec"]["selector"]
        wait_for(
            lambda: "secure-headless" in _selects(api, namespace, got["spec"]["selector"]),
            what="the secure cluster's headless Service",
        )
        assert _selects(api, namespace, got["spec"]["selector"]) == {"secure-headless"}
        assert _selects(api, namespace, chart_monitor) == {"plain-headless"}
    finally:
        proc.stop()


def test_turning_monitoring_off_removes_the_operators_service_monitors_and_no_other(
    api, crd, monitoring_crds, control_plane, namespace
):
    """With monitoring on, the TLS cluster has the ServiceMonitor the operator made. After a
    `helm upgrade` that turns monitoring off (the operator restarted with the chart's new
    settings and Role), the operator deletes it; a ServiceMonitor someone else made under the
    name it would use for another cluster stays."""
    from operatorproc import OperatorProcess, install_rbac

    on = ("monitoring.enabled=true",)
    (deployment,) = [d for d in template(namespace, *on) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    token = install_rbac(api, namespace, *on)
    custom = kubernetes.client.CustomObjectsApi(api)
    group = ("monitoring.coreos.com", "v1", namespace, "servicemonitors")

    def monitor(name: str) -> dict | None:
        try:
            return custom.get_namespaced_custom_object(*group, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    proc = OperatorProcess(control_plane, namespace, token, control_plane.workdir, env)
    proc.start()
    try:
        create(api, namespace, "secure", nodes=3, tls={"enabled": True})
        create(api, namespace, "plain", nodes=3)
        wait_for(
            lambda: monitor("secure-metrics"),
            what=lambda: f"secure-metrics (operator log:\n{proc.log_tail()})",
        )
    finally:
        proc.stop()
    # Someone's own ServiceMonitor, under the name the operator would give the plain cluster's.
    custom.create_namespaced_custom_object(
        *group,
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "plain-metrics"},
            "spec": {
                "selector": {"matchLabels": {"app": "plain"}},
                "endpoints": [{"port": "http"}],
            },
        },
    )

    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    (role,) = [
        d
        for d in template(namespace)
        if d["kind"] == "Role" and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
    ]
    rbac.replace_namespaced_role(role["metadata"]["name"], namespace, role)
    (deployment,) = [d for d in template(namespace) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env_off = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert "LIMEDB_SERVICE_MONITOR" not in env_off
    proc = OperatorProcess(control_plane, namespace, token, control_plane.workdir, env_off)
    proc.start()
    try:
        wait_for(
            lambda: monitor("secure-metrics") is None,
            what=lambda: f"secure-metrics removed (operator log:\n{proc.log_tail()})",
        )
        # The step posts its events after its API calls: the event may follow the delete.
        removed = wait_for(
            lambda: [
                e for e in events_for(api, namespace, "secure") if e[1] == "ServiceMonitorRemoved"
            ],
            what=lambda: f"the ServiceMonitorRemoved event (operator log:\n{proc.log_tail()})",
        )
        assert [kind for kind, _, _ in removed] == ["Normal"], removed
        wait_for(
            lambda: (
                "ServiceMonitor plain-metrics was not made by the operator" in proc.log_tail(5000)
            ),
            what=lambda: f"the plain cluster's step (operator log:\n{proc.log_tail()})",
        )
        assert monitor("plain-metrics") is not None
    finally:
        proc.stop()


def test_a_service_monitor_the_operator_may_not_apply_is_one_warning_and_the_cluster_runs_on(
    api, crd, control_plane, namespace
):
    """Monitoring settings without the permission to apply ServiceMonitors (or without the
    CRD): the TLS cluster's StatefulSet is made all the same, and one Warning event says why,
    not one per step."""
    from operatorproc import OperatorProcess, install_rbac

    token = install_rbac(api, namespace)  # the chart's permissions without the kit
    env = {"LIMEDB_SERVICE_MONITOR": '{"interval": "30s"}'}
    proc = OperatorProcess(control_plane, namespace, token, control_plane.workdir, env)
    proc.start()
    try:
        create(api, namespace, "secure", nodes=3, tls={"enabled": True})
        apps = kubernetes.client.AppsV1Api(api)
        wait_for(
            lambda: apps.read_namespaced_stateful_set("secure", namespace),
            what=lambda: f"the StatefulSet (operator log:\n{proc.log_tail()})",
        )
        wait_for(
            lambda: proc.log_tail(400).count("ServiceMonitor secure-metrics not applied") >= 3,
            what=lambda: f"three steps refused (operator log:\n{proc.log_tail()})",
        )
        warnings = [
            e for e in events_for(api, namespace, "secure") if e[1] == "ServiceMonitorFailed"
        ]
        assert len(warnings) == 1, warnings
        kind, _, message = warnings[0]
        assert kind == "Warning" and "forbidden" in message.lower(), message
    finally:
        proc.stop()
