"""The Helm chart lints, renders objects the real API server accepts, and grants least privilege."""

from __future__ import annotations

import json

import pytest
from controlplane import ROOT
from helm import CHART, KUBE_VERSION, helm, template
from limedb_operator import manifests
from limedb_operator.kube import request

pytestmark = pytest.mark.k8s

# Every permission the operator may hold: (apiGroup, resource) -> allowed verbs.
ALLOWED = {
    ("limedb.io", "limeclusters"): {"get", "list", "watch", "patch"},
    ("limedb.io", "limeclusters/status"): {"get", "patch"},
    ("limedb.io", "limebackups"): {"get", "list", "watch", "patch", "create", "delete"},
    ("limedb.io", "limebackupschedules"): {"get", "list", "watch", "patch"},
    ("limedb.io", "limebackups/status"): {"get", "patch"},
    ("limedb.io", "limebackupschedules/status"): {"get", "patch"},
    ("apps", "statefulsets"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch"},
    ("", "secrets"): {"get", "create", "update"},
    ("", "pods"): {"list", "delete"},  # delete: a rolling upgrade restarts pods
    ("", "persistentvolumeclaims"): {"list", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    # A TLS cluster's own ServiceMonitor; get and delete also with monitoring off, to remove it.
    ("monitoring.coreos.com", "servicemonitors"): {"get", "create", "patch", "delete"},
}
VARIANTS = {
    "namespaced": (),
    "cluster-wide": ("operator.clusterWide=true",),
    "with-cluster": ("limeCluster.create=true",),
    # spec.tls and spec.auth: the helm test pod mounts the CA and authenticates.
    "with-tls-cluster": (
        "limeCluster.create=true",
        "limeCluster.spec.tls.enabled=true",
        "limeCluster.spec.auth.enabled=true",
    ),
}


def test_helm_lint_passes_strict():
    out = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out.stdout


def test_chart_crds_are_the_project_crds():
    names = ["limebackup.yaml", "limebackupschedule.yaml", "limecluster.yaml"]
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == names
    for name in names:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), name


def test_values_schema_rejects_a_misspelt_or_mistyped_value():
    bad = helm("template", "r", str(CHART), "--kube-version", KUBE_VERSION,
               "--set", "operator.clusterWide=maybe", check=False)  # fmt: skip
    assert bad.returncode != 0 and "clusterWide" in bad.stderr
    typo = helm("template", "r", str(CHART), "--kube-version", KUBE_VERSION,
                "--set", "operater.verbose=true", check=False)  # fmt: skip
    assert typo.returncode != 0 and "operater" in typo.stderr


def test_image_pull_policy_reaches_the_limecluster_pods():
    docs = template("limedb", "limeCluster.create=true", "image.pullPolicy=Never")
    lime = next(d for d in docs if d["kind"] == "LimeCluster")
    assert lime["spec"]["imagePullPolicy"] == "Never"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    # The operator copies spec.imagePullPolicy into the StatefulSet's node container.
    sts = manifests.statefulset("lime", "limedb", lime["spec"], replicas=3)
    assert sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    # The LimeCluster's own value wins over the chart's.
    docs = template("limedb", "limeCluster.create=true", "limeCluster.spec.imagePullPolicy=Always")
    lime = next(d for d in docs if d["kind"] == "LimeCluster")
    assert lime["spec"]["imagePullPolicy"] == "Always"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_is_within_the_allowlist(variant):
    docs = template("limedb", *VARIANTS[variant])
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and not _hook(d)]
    assert roles, "the chart must grant the operator its permissions"
    granted: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule or rule["resourceNames"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource) and "*" not in rule["verbs"]
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    for key, verbs in granted.items():
        assert key in ALLOWED, f"{key} is not something the operator uses"
        assert verbs <= ALLOWED[key], f"{key}: {verbs - ALLOWED[key]} exceed the allowlist"
    assert not {"list", "watch"} & granted.get(("", "secrets"), set())
    assert ("", "pods/exec") not in granted
    # The uninstall hook's own account may only find and delete the chart's LimeCluster.
    for role in [d for d in docs if d["kind"] in ("Role", "ClusterRole") and _hook(d)]:
        assert role["kind"] == "Role" and _hook(role) == "pre-delete"
        assert role["rules"] == [
            {"apiGroups": ["limedb.io"], "resources": ["limeclusters"], "verbs": ["get", "delete"]}
        ]
    kinds = {d["kind"] for d in docs if not _hook(d)}
    if variant == "cluster-wide":
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds and "Role" not in kinds
    else:
        assert {"Role", "RoleBinding"} <= kinds and "ClusterRole" not in kinds


def _hook(doc: dict) -> str | None:
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")


def _restricted(pod_spec: dict, where: str) -> None:
    psc = pod_spec.get("securityContext", {})
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID"), where
    for c in pod_spec["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("privileged") in (None, False), where
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
        assert sc.get("readOnlyRootFilesystem") is True, where
    for v in pod_spec.get("volumes", []):
        assert "hostPath" not in v, where


def test_pods_meet_the_restricted_security_profile():
    docs = template("limedb", "limeCluster.create=true")
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    _restricted(deploy["spec"]["template"]["spec"], "operator Deployment")
    pods = {_hook(d): d for d in docs if d["kind"] == "Pod"}
    assert sorted(pods) == ["pre-delete", "test"]
    _restricted(pods["test"]["spec"], "helm test pod")
    _restricted(pods["pre-delete"]["spec"], "uninstall hook pod")


def test_restricted_profile_is_enforced_by_the_api_server(api, crd, namespace):
    """Pod Security Admission in `restricted` mode admits the operator pod, the helm test pod
    and the LimeDB node pod the operator generates, and rejects a pod that is not restricted."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.rest import ApiException
    from limedb_operator import manifests

    CoreV1Api(api).patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    docs = template(namespace, "limeCluster.create=true")
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    for account in [d for d in docs if d["kind"] == "ServiceAccount"]:  # operator's and hook's
        CoreV1Api(api).create_namespaced_service_account(namespace, account)
    hook_pods = {_hook(d): d for d in docs if d["kind"] == "Pod"}
    sts = manifests.statefulset("lime", namespace, manifests.with_defaults({}), 3)
    node_spec = dict(sts["spec"]["template"]["spec"])
    # The StatefulSet controller adds the claim volume; a pod alone needs it spelled out.
    node_spec["volumes"] = [*node_spec["volumes"], {"name": "data", "emptyDir": {}}]

    def pod(name: str, spec: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    for doc in (
        pod("operator", deploy["spec"]["template"]["spec"]),
        hook_pods["test"],
        hook_pods["pre-delete"],
        pod("node", node_spec),
    ):
        _dry_run_apply(api, doc, namespace)

    loose = pod("loose", {"containers": [{"name": "c", "image": "busybox"}]})
    with pytest.raises(ApiException) as err:
        _dry_run_apply(api, loose, namespace)
    assert err.value.status == 403 and "restricted" in err.value.body


def _path(doc: dict, namespace: str) -> str:
    group_version = doc["apiVersion"]
    plural = {
        "ServiceAccount": "serviceaccounts",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Deployment": "deployments",
        "Pod": "pods",
        "LimeCluster": "limeclusters",
        "CustomResourceDefinition": "customresourcedefinitions",
    }[doc["kind"]]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    name = doc["metadata"]["name"]
    if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
        return f"{base}/{plural}/{name}"
    return f"{base}/namespaces/{namespace}/{plural}/{name}"


def _dry_run_apply(api, doc: dict, namespace: str) -> dict:
    return request(
        api,
        "PATCH",
        _path(doc, namespace),
        body=json.dumps(doc),
        query=[("dryRun", "All"), ("fieldManager", "limedb-test"), ("force", "true")],
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_template_output_is_accepted_by_server_side_dry_run(api, crd, namespace, variant):
    from kubernetes.client import CoreV1Api

    docs = template(namespace, *VARIANTS[variant], include_crds=True)
    # A pod is admitted only if its ServiceAccount exists (a dry run creates nothing): the
    # uninstall hook's pod runs as the hook's own account.
    for account in [d for d in docs if d["kind"] == "ServiceAccount"]:
        CoreV1Api(api).create_namespaced_service_account(namespace, account)
    kinds = []
    for doc in docs:
        accepted = _dry_run_apply(api, doc, namespace)
        assert accepted["kind"] == doc["kind"]
        kinds.append(doc["kind"])
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    if variant == "with-cluster":
        assert "LimeCluster" in kinds


def test_helm_install_and_uninstall_on_the_api_server(api, crd, control_plane, namespace):
    from kubernetes.client import AppsV1Api, RbacAuthorizationV1Api

    out = helm("install", "r", str(CHART), "-n", namespace, kubeconfig=control_plane.kubeconfig)
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kind: LimeCluster" in notes and "get lime -w" in notes
    deploy = AppsV1Api(api).read_namespaced_deployment("r-limedb-operator", namespace)
    assert deploy.spec.template.spec.service_account_name == "r-limedb-operator"
    role = RbacAuthorizationV1Api(api).read_namespaced_role("r-limedb-operator", namespace)
    assert {r.resources[0] for r in role.rules} >= {"limeclusters", "statefulsets"}
    helm("uninstall", "r", "-n", namespace, kubeconfig=control_plane.kubeconfig)
    listed = AppsV1Api(api).list_namespaced_deployment(namespace).items
    assert [d.metadata.name for d in listed] == []
