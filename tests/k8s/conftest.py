"""Fixtures of the k8s tier: one real control plane per session, a fresh namespace per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from controlplane import ROOT, ControlPlane
from k8swait import wait_for
from realkube import RealKube, kube_release, kube_up

CRD_PATHS = sorted((ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    workdir = Path(tempfile.mkdtemp(prefix="limedb-k8s-"))
    plane = ControlPlane(workdir)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
    if request.session.testsfailed:
        print(f"\nk8s control plane logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube() -> Iterator[RealKube]:
    """The real one-node Kubernetes (scripts/kube-up.sh: kubelet, containerd, kube-proxy,
    CoreDNS, local PVs), started for the session or reused; see realkube.py for who stops it."""
    cluster = kube_up()
    try:
        yield cluster
    finally:
        kube_release()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    return control_plane.api_client()


@pytest.fixture(scope="session")
def crd(api: kubernetes.client.ApiClient) -> dict:
    """Every CRD of crds/ (the operator watches all of them), Established; the LimeCluster's
    body is returned."""
    bodies = [yaml.safe_load(p.read_text()) for p in CRD_PATHS]
    ext = kubernetes.client.ApiextensionsV1Api(api)
    for body in bodies:
        ext.create_custom_resource_definition(body)

    def established(name: str) -> bool:
        got = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in got.status.conditions or []
        )

    for body in bodies:
        name = body["metadata"]["name"]
        wait_for(lambda n=name: established(n), what=f"the CRD {name} to be Established")
    return next(b for b in bodies if b["spec"]["names"]["kind"] == "LimeCluster")


@pytest.fixture
def namespace(api: kubernetes.client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    # Pods are admitted only once the serviceaccount controller made the "default" account.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        what=f"the default ServiceAccount of {name}",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def operator(api, crd, control_plane: ControlPlane, namespace: str):
    """A running limedb-operator for `namespace`, holding only the chart's permissions."""
    from operatorproc import OperatorProcess, install_rbac

    token = install_rbac(api, namespace)
    proc = OperatorProcess(control_plane, namespace, token, control_plane.workdir)
    proc.start()
    yield proc
    proc.stop()
