"""Issue 13, acceptance 5, on real pods: a release with `limeCluster.create=true` passes
`helm test` (the chart's test pod, of the same image, through the client Service); `helm
uninstall`, with and without `--wait`, leaves what `pvcRetention.whenDeleted` says and nothing
else within 60 s; a reinstall over retained volumes comes back with the data."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from k8swait import wait_for
from lime_pods import CHART, CHART_IMAGE, converged, current_image, delete_clusters, run_client
from realkube import RealKube

pytestmark = pytest.mark.k8s

SPEC = {"nodes": 3, "replicationFactor": 3, "vnodes": 16, "storage": {"size": "1Gi"}}
UNINSTALLED_WITHIN_S = 60


@pytest.fixture
def ns(kube: RealKube) -> Iterator[str]:
    current_image(kube)
    name = kube.namespace("helm")
    yield name
    delete_clusters(kube, name)
    kube.helm("uninstall", "r", "-n", name, "--wait", check=False)
    kube.delete_namespace(name, wait=False)


def install(kube: RealKube, ns: str, when_deleted: str) -> None:
    spec = {**SPEC, "pvcRetention": {"whenDeleted": when_deleted}}
    kube.helm("install", "r", str(CHART), "-n", ns, *CHART_IMAGE,
              "--set", "limeCluster.create=true", "--set", "limeCluster.name=lime",
              "--set-json", f"limeCluster.spec={json.dumps(spec)}", "--wait", "--timeout", "3m")  # fmt: skip
    converged(kube, ns, 3)


def left(kube: RealKube, ns: str) -> dict[str, list[str]]:
    """Every object of the release and its LimeCluster still in the namespace, by kind (the
    namespace's own default ServiceAccount and CA ConfigMap aside)."""
    kinds = ("limecluster,statefulset,deployment,replicaset,pod,service,secret,pdb,configmap,"
             "serviceaccount,role,rolebinding,persistentvolumeclaim")  # fmt: skip
    names = kube.kubectl("-n", ns, "get", kinds, "-o", "name").stdout.split()
    ignored = {"serviceaccount/default", "configmap/kube-root-ca.crt"}
    out: dict[str, list[str]] = {}
    for n in names:
        if n not in ignored:
            kind, name = n.split("/", 1)
            out.setdefault(kind.split(".")[0], []).append(name)
    return out


def test_helm_test_passes_and_uninstall_wait_removes_everything_when_deleted_is_delete(
    kube: RealKube, ns: str
):
    install(kube, ns, "Delete")
    out = kube.helm("test", "r", "-n", ns, "--timeout", "2m").stdout
    assert "Phase:          Succeeded" in out, out
    started = time.monotonic()
    kube.helm("uninstall", "r", "-n", ns, "--wait", "--timeout", f"{UNINSTALLED_WITHIN_S}s")
    remaining = UNINSTALLED_WITHIN_S - (time.monotonic() - started)
    wait_for(lambda: left(kube, ns) == {}, timeout=max(remaining, 1.0),
             what=lambda: f"nothing left; have {left(kube, ns)}")  # fmt: skip


def test_uninstall_keeps_only_retained_volumes_and_a_reinstall_has_the_data(
    kube: RealKube, ns: str
):
    install(kube, ns, "Retain")
    run_client(kube, ns, "write", nodes=3)
    claims = {c["metadata"]["name"]: c["metadata"]["uid"]
              for c in kube.kubectl_json("-n", ns, "get", "pvc")["items"]}  # fmt: skip
    assert sorted(claims) == ["data-lime-0", "data-lime-1", "data-lime-2"]
    started = time.monotonic()
    kube.helm("uninstall", "r", "-n", ns)  # no --wait: the pre-delete hook still runs first
    remaining = UNINSTALLED_WITHIN_S - (time.monotonic() - started)
    want = {"persistentvolumeclaim": sorted(claims)}
    wait_for(lambda: left(kube, ns) == want, timeout=max(remaining, 1.0),
             what=lambda: f"only the claims left; have {left(kube, ns)}")  # fmt: skip
    kept = {c["metadata"]["name"]: c["metadata"]["uid"]
            for c in kube.kubectl_json("-n", ns, "get", "pvc")["items"]}  # fmt: skip
    assert kept == claims
    install(kube, ns, "Retain")
    run_client(kube, ns, "read", nodes=3)
