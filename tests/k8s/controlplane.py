"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

The binaries come from scripts/k8s-tools.sh (.cache/k8s/bin). Certificates and the service
account signing key are generated with openssl into a temporary directory for each run; the
tests talk to the API server as an admin (client certificate in group system:masters), and the
operator can be given a real ServiceAccount token so that the chart's RBAC is what it runs with.
There is no kubelet and no scheduler: pods stay Pending. This fast tier proves what the API
server and its controllers decide (CRD, chart, RBAC, operator status, volume expansion); what
needs running pods is proven on the real one-node Kubernetes (realkube.py, test_pods_*.py).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "k8s" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "helm")


def binary(name: str) -> Path:
    path = BIN / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} is missing: run `make k8s-tools` (builds kube-apiserver, "
            "kube-controller-manager, etcd and helm from the Go module proxy into .cache/k8s/bin)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """CA, API server serving cert, admin client cert, service-account signing key."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=limedb-test-ca",
        "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    ext = d / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n"
    )
    client_ext = d / "client.ext"
    client_ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    for name, subj, extfile in (
        ("apiserver", "/CN=kube-apiserver", ext),
        ("admin", "/O=system:masters/CN=limedb-test-admin", client_ext),
        ("controller-manager", "/CN=system:kube-controller-manager", client_ext),
    ):
        _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=d)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subj, "-out", f"{name}.csr", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", str(extfile), "-out", f"{name}.crt",
            cwd=d,
        )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class ControlPlane:
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = Path()

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_file = log  # type: ignore[attr-defined]
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def _wait_https(
        self, url: str, what: str, proc: subprocess.Popen, timeout: float = 90, verify: bool = True
    ) -> None:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        else:  # the controller manager serves /healthz with its own self-signed certificate
            ctx = ssl._create_unverified_context()
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}):\n{self.log_tail(what)}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout}s ({last}):\n{self.log_tail(what)}")

    def start(self) -> ControlPlane:
        for name in BINARIES:
            binary(name)
        make_pki(self.pki)
        etcd_port, peer_port, api_port, kcm_port = (free_port() for _ in range(4))
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(binary("etcd")),
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", etcd_url,
                "--advertise-client-urls", etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                # Throwaway test state: fsync would only cost the shared disk time.
                "--unsafe-no-fsync",
                "--log-level", "warn",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{etcd_url}/health", timeout=1):
                    break
            except Exception:
                if etcd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start:\n{self.log_tail('etcd')}") from None
                time.sleep(0.1)

        pki = self.pki
        self.server = f"https://127.0.0.1:{api_port}"
        api = self._spawn(
            "kube-apiserver",
            [
                str(binary("kube-apiserver")),
                "--etcd-servers", etcd_url,
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--secure-port", str(api_port),
                "--tls-cert-file", str(pki / "apiserver.crt"),
                "--tls-private-key-file", str(pki / "apiserver.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--service-cluster-ip-range", "10.96.0.0/16",
                "--authorization-mode", "RBAC",
                "--allow-privileged=false",
                "--enable-priority-and-fairness=false",
                "--v", "1",
            ],
        )  # fmt: skip
        self._wait_https(f"{self.server}/readyz", "kube-apiserver", api)
        self.kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig",
            self.server,
            pki / "ca.crt",
            {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
        )
        kcm_config = write_kubeconfig(
            self.workdir / "kcm.kubeconfig",
            self.server,
            pki / "ca.crt",
            {
                "client-certificate": str(pki / "controller-manager.crt"),
                "client-key": str(pki / "controller-manager.key"),
            },
        )
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")),
                "--kubeconfig", str(kcm_config),
                "--authentication-kubeconfig", str(kcm_config),
                "--authorization-kubeconfig", str(kcm_config),
                "--bind-address", "127.0.0.1",
                "--secure-port", str(kcm_port),
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--service-account-private-key-file", str(pki / "sa.key"),
                "--root-ca-file", str(pki / "ca.crt"),
                # No kubelet here: the node lifecycle controller has no node to watch.
                "--controllers", "*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--concurrent-statefulset-syncs", "5",
                "--v", "1",
            ],
        )  # fmt: skip
        self._wait_https(
            f"https://127.0.0.1:{kcm_port}/healthz", "kube-controller-manager", kcm, verify=False
        )
        return self

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.log_file.close()  # type: ignore[attr-defined]
        self.procs.clear()
