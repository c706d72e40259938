"""`helm install` with a LimeCluster, then `helm test`: the chart's test pod writes and reads a
key through the cluster's client Service."""

from __future__ import annotations

import json

import kubernetes
import pytest
from helm import CHART, helm
from lime_helpers import converged, pod_url
from limedb.client import Client
from operatorproc import OperatorProcess
from podrunner import PodRunner

pytestmark = pytest.mark.k8s


def not_the_operator_deployment(pod) -> bool:
    # The operator runs as a local process (OperatorProcess) with the release's own
    # ServiceAccount token; the stand-in runs the node pods and the helm test pod.
    return not any(ref.kind == "ReplicaSet" for ref in pod.metadata.owner_references or [])


def test_helm_install_with_a_cluster_passes_helm_test(api, crd, control_plane, namespace):
    spec = {"nodes": 3, "replicationFactor": 3, "durability": "periodic", "vnodes": 16}
    kubeconfig = control_plane.kubeconfig
    helm("install", "r", str(CHART), "-n", namespace, "--set", "limeCluster.create=true",
         "--set-json", f"limeCluster.spec={json.dumps(spec)}", kubeconfig=kubeconfig)  # fmt: skip
    core = kubernetes.client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        "r-limedb-operator", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    operator = OperatorProcess(control_plane, namespace, token, control_plane.workdir)
    runner = PodRunner(api, namespace, control_plane.workdir, runs=not_the_operator_deployment)
    runner.start()
    operator.start()
    try:
        converged(api, namespace, 3, operator, runner)
        out = helm("test", "r", "-n", namespace, "--timeout", "2m", kubeconfig=kubeconfig)
        assert "Phase:          Succeeded" in out.stdout, out.stdout
        # The hook pod is deleted on success; the key it wrote is still there.
        with Client(pod_url(api, namespace, 1)) as c:
            assert c.get("helm-test-key").startswith(b"helm-test-")
    finally:
        operator.stop()
        runner.stop()
    assert not runner.errors, runner.errors
