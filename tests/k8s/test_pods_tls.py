"""Issue 16, acceptance 4, on real pods of the real image: a release of the chart with a
LimeCluster with `spec.tls.enabled` (the operator's self-signed CA and per-pod certificates) and
`spec.auth.enabled` comes up; the operator scales it 3 -> 4 -> 3 over TLS, and keys written
before are read back through every node after; `helm test` passes over TLS with the admin's
credentials; plaintext HTTP and RESP are refused; a pod's certificate issued anew is served
without a restart. With the chart's monitoring kit on, the cluster's own ServiceMonitor scrapes
every node's /metrics over HTTPS as written (its CA Secret and server name), and the chart's
plaintext one leaves the cluster out.

One test (one cluster): each step needs the previous one's state, and a TLS cluster costs a
minute to bring up.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest
import redis
from cryptography import x509
from k8swait import wait_for
from lime_helpers import label_selector
from lime_pods import CHART, CHART_IMAGE, converged, current_image, delete_clusters
from limedb.client import Client, Unauthorized
from limedb_operator.database import ServerNameTransport
from realkube import ROOT, RealKube

pytestmark = pytest.mark.k8s

SPEC = {
    "nodes": 3,
    "replicationFactor": 3,
    "vnodes": 16,
    "storage": {"size": "1Gi"},
    "tls": {"enabled": True},
    "auth": {"enabled": True},
}
KEYS = 500


@pytest.fixture(scope="module")
def ns(kube: RealKube) -> Iterator[str]:
    current_image(kube)
    # The prometheus-operator's CRDs, for the chart's monitoring kit (no Prometheus runs here:
    # the test scrapes as the ServiceMonitor says).
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "monitoring"))
    name = kube.namespace("tls")
    yield name
    delete_clusters(kube, name)
    kube.helm("uninstall", "r", "-n", name, "--wait", check=False)
    kube.delete_namespace(name, wait=False)


def _secret(kube: RealKube, ns: str, name: str, key: str) -> str:
    data = kube.kubectl_json("-n", ns, "get", "secret", name)["data"]
    return base64.b64decode(data[key]).decode()


def _pod_ip(kube: RealKube, ns: str, pod: str) -> str:
    return kube.kubectl_json("-n", ns, "get", "pod", pod)["status"]["podIP"]


def _client(kube: RealKube, ns: str, pod: str, ca: str, password: str) -> Client:
    """A client of one node from this machine (it reaches pod IPs, not cluster DNS): by IP,
    checking the certificate against the pod's DNS name, as user admin."""
    inner = httpx.HTTPTransport(verify=ssl.create_default_context(cadata=ca))
    transport = ServerNameTransport(inner, f"{pod}.lime-headless.{ns}.svc")
    url = f"https://{_pod_ip(kube, ns, pod)}:8484"
    return Client(url, transport=transport, user="admin", password=password, timeout=30)


def _served_serial(ip: str, ca: str, server_name: str) -> int:
    """The serial of the certificate a new TLS handshake with the node's HTTP port shows."""
    context = ssl.create_default_context(cadata=ca)
    with (
        socket.create_connection((ip, 8484), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def _restarts(kube: RealKube, ns: str, pod: str) -> int:
    (status,) = kube.kubectl_json("-n", ns, "get", "pod", pod)["status"]["containerStatuses"]
    return int(status["restartCount"])


def _scrape_as_the_service_monitor_says(kube: RealKube, ns: str) -> set[str]:
    """GET /metrics of every endpoint the cluster's ServiceMonitor selects, over its scheme,
    trusting only the CA of the Secret it names and checking its server name, as Prometheus
    would; the addresses scraped."""
    sm = kube.kubectl_json("-n", ns, "get", "servicemonitor", "lime-metrics")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    ref = endpoint["tlsConfig"]["ca"]["secret"]
    ca = _secret(kube, ns, ref["name"], ref["key"])
    selector = label_selector(sm["spec"]["selector"])
    (service,) = kube.kubectl_json("-n", ns, "get", "service", "-l", selector)["items"]
    slices = kube.kubectl_json("-n", ns, "get", "endpointslice", "-l",
                               f"kubernetes.io/service-name={service['metadata']['name']}")  # fmt: skip
    scraped = set()
    for piece in slices["items"]:
        (port,) = [p["port"] for p in piece["ports"] if p["name"] == endpoint["port"]]
        for address in (a for e in piece["endpoints"] for a in e["addresses"]):
            inner = httpx.HTTPTransport(verify=ssl.create_default_context(cadata=ca))
            transport = ServerNameTransport(inner, endpoint["tlsConfig"]["serverName"])
            with httpx.Client(transport=transport, timeout=30) as http:
                got = http.get(f"https://{address}:{port}{endpoint['path']}")
            assert got.status_code == 200, got.text[:300]
            assert "limedb_ring_members" in got.text
            scraped.add(address)
    return scraped


def _read_all(kube: RealKube, ns: str, pods: int, ca: str, password: str) -> None:
    names = [f"tls-key-{i}" for i in range(KEYS)]
    for o in range(pods):
        with _client(kube, ns, f"lime-{o}", ca, password) as c:
            got = c.batch(get=names)
        missing = [k for k in names if got.get(k) != k.encode()]
        assert not missing, f"lime-{o} misses {len(missing)} keys: {missing[:5]}"


def test_tls_cluster_with_users_scales_3_4_3_over_tls_and_passes_helm_test(kube: RealKube, ns: str):
    out = kube.helm("install", "r", str(CHART), "-n", ns, *CHART_IMAGE,
              "--set", "limeCluster.create=true", "--set", "limeCluster.name=lime",
              "--set", "monitoring.enabled=true",
              "--set-json", f"limeCluster.spec={json.dumps(SPEC)}",
              "--wait", "--timeout", "3m")  # fmt: skip
    assert "TLS is required on every port" in out.stdout, out.stdout
    converged(kube, ns, 3)
    ca = _secret(kube, ns, "lime-ca", "ca.crt")
    password = _secret(kube, ns, "lime-admin", "password")
    # Monitoring: Prometheus would reach all three nodes over HTTPS with the cluster's own
    # ServiceMonitor; the chart's (plaintext) one selects none of this cluster's Services.
    pod_ips = {_pod_ip(kube, ns, f"lime-{o}") for o in range(3)}
    assert _scrape_as_the_service_monitor_says(kube, ns) == pod_ips
    chart_sm = kube.kubectl_json("-n", ns, "get", "servicemonitor", "r-limedb")["spec"]["selector"]
    without_tls = label_selector(chart_sm)
    any_headless = label_selector({"matchLabels": chart_sm["matchLabels"]})
    assert not kube.kubectl_json("-n", ns, "get", "service", "-l", without_tls)["items"]
    assert kube.kubectl_json("-n", ns, "get", "service", "-l", any_headless)["items"]
    # The CA's key stays in its own Secret; the pods' Secret holds their certificates.
    assert set(kube.kubectl_json("-n", ns, "get", "secret", "lime-tls")["data"]) >= {
        "ca.crt", "lime-0.crt", "lime-0.key", "lime-2.crt", "lime-2.key"}  # fmt: skip

    # Plaintext is refused on the HTTP and RESP ports; TLS without credentials gets 401.
    ip = _pod_ip(kube, ns, "lime-0")
    # Closed unread: an empty reply or a reset, by timing.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"http://{ip}:8484/livez", timeout=10)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=ip, port=6379, socket_timeout=10).ping()
    with _client(kube, ns, "lime-0", ca, "wrong-password") as c, pytest.raises(Unauthorized):
        c.get("tls-key-0")
    tls_resp = redis.Redis(host=ip, port=6379, ssl=True, ssl_ca_data=ca, ssl_check_hostname=False,
                           username="admin", password=password, socket_timeout=10)  # fmt: skip
    assert tls_resp.set("resp-over-tls", "yes") and tls_resp.get("resp-over-tls") == b"yes"
    tls_resp.close()

    with _client(kube, ns, "lime-1", ca, password) as c:
        c.batch(put={f"tls-key-{i}": f"tls-key-{i}" for i in range(KEYS)})

    # Rotation: lime-0's certificate taken out of the Secret is issued anew by the operator; the
    # kubelet updates the mounted Secret (within a minute or so) and the node serves the new one
    # without a restart. It runs during the scaling below and is checked after it.
    lime0 = f"lime-0.lime-headless.{ns}.svc"
    tls0 = _secret(kube, ns, "lime-tls", "lime-0.crt")
    assert _served_serial(ip, ca, lime0) == _serial(tls0)
    restarts = _restarts(kube, ns, "lime-0")
    kube.kubectl("-n", ns, "patch", "secret", "lime-tls", "--type=json",
                 "-p", '[{"op": "remove", "path": "/data/lime-0.crt"}]')  # fmt: skip

    # The operator reaches the nodes only over TLS: every join and leave below goes through it.
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=4")
    obj = converged(kube, ns, 4)
    assert [m["pod"] for m in obj["status"]["members"] if m["state"] == "Normal"] == [
        f"lime-{i}" for i in range(4)]  # fmt: skip
    assert all(m["nodeId"].startswith("https://") for m in obj["status"]["members"])
    assert "lime-3.crt" in kube.kubectl_json("-n", ns, "get", "secret", "lime-tls")["data"]
    _read_all(kube, ns, 4, ca, password)
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=3")
    converged(kube, ns, 3)
    _read_all(kube, ns, 3, ca, password)

    out = kube.helm("test", "r", "-n", ns, "--timeout", "2m").stdout
    assert "Phase:          Succeeded" in out, out

    def reissued() -> int | None:
        data = kube.kubectl_json("-n", ns, "get", "secret", "lime-tls")["data"]
        pem = base64.b64decode(data.get("lime-0.crt", "")).decode()
        return _serial(pem) if pem and pem != tls0 else None

    new = wait_for(reissued, timeout=30, what="lime-0's certificate issued anew")
    wait_for(lambda: _served_serial(ip, ca, lime0) == new, timeout=150, interval=2.0,
             what="lime-0 serving its new certificate")  # fmt: skip
    assert _restarts(kube, ns, "lime-0") == restarts
