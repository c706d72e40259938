"""Runs `limedb-operator` as a real process with the chart's RBAC and a ServiceAccount token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import kubernetes
from controlplane import ControlPlane, write_kubeconfig
from helm import template


def install_rbac(api: kubernetes.client.ApiClient, namespace: str, *sets: str) -> str:
    """Create the chart's ServiceAccount, Role and RoleBinding (rendered with the `--set`s
    `sets`); return a token of the account."""
    core = kubernetes.client.CoreV1Api(api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    account = ""
    for doc in template(namespace, *sets):
        kind = doc["kind"]
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(namespace, doc)
            account = doc["metadata"]["name"]
        elif kind == "Role":
            rbac.create_namespaced_role(namespace, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(namespace, doc)
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    return token.status.token


class OperatorProcess:
    """The operator as its Deployment would run it, but as a local process (no kubelet here)."""

    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        token: str,
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.env = dict(env or {})
        self.log_path = workdir / f"operator-{namespace}.log"
        self.kubeconfig = write_kubeconfig(
            workdir / f"operator-{namespace}.kubeconfig",
            plane.server,
            plane.pki / "ca.crt",
            {"token": token},
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("limedb-operator")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "WATCH_NAMESPACE": self.namespace,
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(exe), "--liveness", "", "--verbose"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._log = log

    def kill(self) -> None:
        """SIGKILL: no chance to finish a step or clean up, like a node or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close()

    def _close(self) -> None:
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
