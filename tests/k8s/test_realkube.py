"""The one-node Kubernetes of scripts/kube-up.sh does what LimeDB's pods rely on: pods run under
the `restricted` Pod Security Standard as the real admission enforces it, CoreDNS resolves
Service names, kube-proxy carries a ClusterIP Service to its pod, a local PersistentVolume
binds and is writable through fsGroup (and is offered again, emptied, once its claim is gone),
and `kubectl logs` / `kubectl exec` reach the kubelet.

The pods run the busybox image scripts/node-images.sh builds from Debian's busybox-static, so
these tests need nothing of `make image`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8swait import wait_for
from realkube import KubeError, RealKube, node_image

pytestmark = pytest.mark.k8s

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, command: str, labels: dict | None = None, **spec) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "securityContext": dict(RESTRICTED_POD),
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": node_image("busybox"),
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", command],
                    "securityContext": RESTRICTED_CONTAINER,
                    "volumeMounts": spec.pop("mounts", []),
                }
            ],
            **spec,
        },
    }
    return json.dumps(body)


def wait_ready(kube: RealKube, ns: str, name: str) -> None:
    result = kube.kubectl(
        "-n", ns, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s", check=False
    )
    if result.returncode != 0:
        described = kube.kubectl("-n", ns, "describe", "pod", name, check=False).stdout
        raise AssertionError(f"pod {name} not Ready: {result.stderr}\n{described[-3000:]}")


@pytest.fixture(scope="module")
def ns(kube: RealKube) -> Iterator[str]:
    name = kube.namespace("smoke")
    yield name
    kube.delete_namespace(name, wait=True)


@pytest.fixture(scope="module")
def web(kube: RealKube, ns: str) -> str:
    """A pod serving HTTP on 8080 behind the ClusterIP Service `web`; returns its pod name."""
    kube.apply(
        pod(
            "web",
            "echo serving-from-$(hostname) > /www/index.html && echo web-started"
            " && exec httpd -f -v -p 8080 -h /www",
            mounts=[{"name": "www", "mountPath": "/www"}],
            volumes=[{"name": "www", "emptyDir": {}}],
        ),
        ns,
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kube.apply(json.dumps(service), ns)
    wait_ready(kube, ns, "web")
    return "web"


@pytest.fixture(scope="module")
def client(kube: RealKube, ns: str) -> str:
    kube.apply(pod("client", "exec sleep 3600"), ns)
    wait_ready(kube, ns, "client")
    return "client"


def test_restricted_namespace_admits_a_compliant_pod_and_refuses_a_root_one(
    kube: RealKube, ns: str, client: str
):
    got = kube.kubectl_json("-n", ns, "get", "pod", client)
    assert got["status"]["phase"] == "Running"
    uid = kube.kubectl("-n", ns, "exec", client, "--", "id", "-u").stdout.strip()
    assert uid == "10001"
    root = json.loads(pod("as-root", "sleep 1"))
    root["spec"]["securityContext"] = {"runAsUser": 0}
    with pytest.raises(KubeError, match='violates PodSecurity "restricted'):
        kube.apply(json.dumps(root), ns)


def test_a_service_name_resolves_through_coredns(kube: RealKube, ns: str, web: str, client: str):
    cluster_ip = kube.kubectl_json("-n", ns, "get", "service", "web")["spec"]["clusterIP"]
    fqdn = f"web.{ns}.svc.cluster.local"
    out = kube.kubectl("-n", ns, "exec", client, "--", "nslookup", fqdn).stdout
    assert cluster_ip in out, out
    # The search path of the pod's resolv.conf (the kubelet's clusterDNS) finds the short name.
    resolv = kube.kubectl("-n", ns, "exec", client, "--", "cat", "/etc/resolv.conf").stdout
    assert f"search {ns}.svc.cluster.local" in resolv, resolv


def http_get(kube: RealKube, ns: str, client: str, host: str) -> str:
    """The body of GET / from `host`:80, sent from the client pod ("" if it failed). busybox's
    nc, as its wget crashes on an address literal in this static build."""
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 " + host + " 80"
    result = kube.kubectl("-n", ns, "exec", client, "--", "sh", "-c", request, check=False)
    if result.returncode != 0 or "200 OK" not in result.stdout:
        return ""
    return result.stdout.split("\n\n", 1)[-1].strip()  # text mode turned CRLF into LF


def test_a_cluster_ip_service_reaches_its_pod_through_kube_proxy(
    kube: RealKube, ns: str, web: str, client: str
):
    cluster_ip = kube.kubectl_json("-n", ns, "get", "service", "web")["spec"]["clusterIP"]
    # kube-proxy programs the Service's rules moments after its endpoints appear.
    body = wait_for(
        lambda: http_get(kube, ns, client, cluster_ip),
        timeout=60,
        what=f"an answer from web at {cluster_ip}:80",
    )
    assert body == "serving-from-web"
    # By its short name too: the pod's search path, CoreDNS, then kube-proxy.
    assert http_get(kube, ns, client, "web") == "serving-from-web"


def test_kubectl_logs_shows_what_the_container_printed(kube: RealKube, ns: str, web: str):
    logs = kube.kubectl("-n", ns, "logs", web).stdout
    assert "web-started" in logs


def test_a_local_volume_binds_and_fs_group_makes_it_writable(kube: RealKube, ns: str):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    kube.apply(json.dumps(claim), ns)
    spec = {
        "mounts": [{"name": "data", "mountPath": "/data"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }
    writer = json.loads(
        pod("writer", "echo kept > /data/file && stat -c '%g %a' /data && exec sleep 3600", **spec)
    )
    writer["spec"]["securityContext"]["fsGroup"] = 2000
    kube.apply(json.dumps(writer), ns)
    wait_ready(kube, ns, "writer")
    got = kube.kubectl_json("-n", ns, "get", "pvc", "data")
    assert got["status"]["phase"] == "Bound"
    volume = kube.kubectl_json("get", "pv", got["spec"]["volumeName"])
    assert "local" in volume["spec"], volume["spec"]
    # The directory belongs to the pod's fsGroup, group-writable: uid 10001 could write.
    assert kube.kubectl("-n", ns, "exec", "writer", "--", "cat", "/data/file").stdout == "kept\n"
    group, mode = kube.kubectl("-n", ns, "logs", "writer").stdout.split()
    assert group == "2000"
    assert int(mode[-2]) & 0o2, mode


def test_a_released_volume_is_offered_again_empty(kube: RealKube, ns: str):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "once"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    kube.apply(json.dumps(claim), ns)
    user = json.loads(
        pod(
            "once",
            "echo left-behind > /data/file && exec sleep 3600",
            mounts=[{"name": "data", "mountPath": "/data"}],
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "once"}}],
        )
    )
    user["spec"]["securityContext"]["fsGroup"] = 2000
    kube.apply(json.dumps(user), ns)
    wait_ready(kube, ns, "once")
    volume = kube.kubectl_json("-n", ns, "get", "pvc", "once")["spec"]["volumeName"]
    path = Path(kube.kubectl_json("get", "pv", volume)["spec"]["local"]["path"])
    assert (path / "file").read_text() == "left-behind\n"
    kube.kubectl("-n", ns, "delete", "pod", "once", "--wait=true")
    kube.kubectl("-n", ns, "delete", "pvc", "once", "--wait=true")

    def phase() -> str:
        return kube.kubectl_json("get", "pv", volume)["status"]["phase"]

    wait_for(lambda: phase() == "Released", timeout=60, what=f"{volume} Released")
    kube.renew_volumes()
    wait_for(lambda: phase() == "Available", timeout=60, what=f"{volume} Available again")
    assert list(path.iterdir()) == []


def _hidden_netns_mounts() -> list[str]:
    """Pod network namespaces mounted under /run/netns but hidden under a later mount of
    /run/netns itself (so containerd can never remove their files)."""
    tops: set[str] = set()
    nsfs: list[tuple[str, str]] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_id, parent, point = fields[0], fields[1], fields[4]
        if point == "/run/netns":
            tops.add(mount_id)
        elif point.startswith("/run/netns/cni-"):
            nsfs.append((parent, point))
    top = max(tops, key=int) if tops else None  # the visible one is the newest
    return [point for parent, point in nsfs if parent != top]


def test_a_pod_is_deleted_whole_after_the_machines_first_ip_netns_add(kube: RealKube, ns: str):
    """Pods run while the tests create network namespaces of their own (`ip netns add`, which
    turns /run/netns into a mount of itself the first time): a deleted pod still goes away
    and leaves no network namespace behind (kube-up makes /run/netns that mount before
    containerd starts; without it a pod's namespace mount was copied and the copy's
    original could not be removed: the pod stayed Terminating)."""
    kube.apply(pod("netns-probe", "exec sleep 3600"), ns)
    wait_ready(kube, ns, "netns-probe")
    name = "limedb-netns-probe"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert not _hidden_netns_mounts()
        kube.kubectl("-n", ns, "delete", "pod", "netns-probe", "--timeout=60s")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert not _hidden_netns_mounts()
