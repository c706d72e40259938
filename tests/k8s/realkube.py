"""The real one-node Kubernetes of scripts/kube-up.sh, for tests: the `kube` session fixture
(tests/k8s/conftest.py) starts it with the same script a developer runs (`make kube-up`), or
reuses the one already running, and hands tests its kubeconfig and kubectl/helm helpers.

Who takes it down: a cluster a developer brought up stays up after the session; one that a
test session started is taken down (scripts/kube-down.sh) by the last session using it, so
two sessions on one machine (two worktrees, say) can share it. Each session registers its pid
in /run/limedb-kube/users/; LIMEDB_KUBE_KEEP=1 keeps a test-started cluster up.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from support.netns import pid_alive

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "k8s" / "bin"
KUBE_UP = ROOT / "scripts" / "kube-up.sh"
KUBE_DOWN = ROOT / "scripts" / "kube-down.sh"
RUN = Path("/run/limedb-kube")
USERS = RUN / "users"
STARTED_BY_TESTS = RUN / "started-by-tests"
IMAGES = ROOT / ".cache" / "k8s" / "images"
# The image `make image` builds and kube-up imports into the node (imagePullPolicy Never).
LIMEDB_IMAGE = "localhost/limedb:dev"
RESTRICTED = "pod-security.kubernetes.io/enforce"


class KubeError(RuntimeError):
    pass


def node_image(name: str) -> str:
    """The reference of an image scripts/node-images.sh built and kube-up imported:
    "pause", "coredns" or "busybox" (sh, nslookup, wget, httpd, ... from Debian's
    busybox-static)."""
    return (IMAGES / f"{name}.ref").read_text().split()[0]


@dataclass(frozen=True)
class RealKube:
    kubeconfig: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def _run(
        self, tool: str, args: tuple[str, ...], stdin: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / tool), *args]
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        if check and result.returncode != 0:
            raise KubeError(
                f"{tool} {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, stdin, check, timeout)

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ("-n", namespace) if namespace else ()
        self.kubectl(*ns, "apply", "-f", "-", stdin=manifest)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, None, check, timeout)

    def image_present(self, image: str) -> bool:
        """True if the node's containerd holds `image` (imported by kube-up)."""
        node = self.kubectl_json("get", "node")["items"][0]
        return any(image in (i.get("names") or []) for i in node["status"].get("images", []))

    def namespace(self, prefix: str = "t", restricted: bool = True) -> str:
        """A new namespace enforcing the `restricted` Pod Security Standard (unless told not
        to), returned once its default ServiceAccount exists (pods are refused before)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        labels = f"\n  labels: {{{RESTRICTED}: restricted}}" if restricted else ""
        self.apply(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
        self.kubectl("-n", name, "wait", "--for=create", "serviceaccount/default", "--timeout=60s")
        return name

    def renew_volumes(self) -> None:
        """Offers the local PersistentVolumes whose claims were deleted (Released) again,
        emptied, as kube-up does on every call: for a session that goes through more volumes
        than the cluster has (LIMEDB_KUBE_PVS, 32 by default)."""
        result = subprocess.run(["bash", str(KUBE_UP)], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise KubeError(f"scripts/kube-up.sh exited {result.returncode}:\n{result.stderr}")

    def delete_namespace(self, name: str, wait: bool = False) -> None:
        self.kubectl("delete", "namespace", name, f"--wait={str(wait).lower()}", timeout=300)


def _running() -> bool:
    kubeconfig = RUN / "admin.kubeconfig"
    if not kubeconfig.exists():
        return False
    probe = subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def _other_users() -> list[int]:
    if not USERS.is_dir():
        return []
    pids = [int(p.name) for p in USERS.iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and pid_alive(pid)]


def kube_up() -> RealKube:
    """Starts the cluster (or reuses it) and registers this process as one of its users."""
    was_up = _running()
    result = subprocess.run(["bash", str(KUBE_UP)], capture_output=True, text=True, timeout=900)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("KUBECONFIG="):
        raise KubeError(f"scripts/kube-up.sh exited {result.returncode}:\n{result.stderr[-4000:]}")
    USERS.mkdir(parents=True, exist_ok=True)
    (USERS / str(os.getpid())).touch()
    if not was_up:
        STARTED_BY_TESTS.write_text(f"{os.getpid()}\n")
    return RealKube(Path(lines[-1].removeprefix("KUBECONFIG=")))


def kube_release() -> None:
    """Unregisters this process; the last user of a test-started cluster takes it down."""
    (USERS / str(os.getpid())).unlink(missing_ok=True)
    if os.environ.get("LIMEDB_KUBE_KEEP") == "1" or not STARTED_BY_TESTS.exists():
        return
    if _other_users():
        return
    result = subprocess.run(["bash", str(KUBE_DOWN)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise KubeError(f"scripts/kube-down.sh exited {result.returncode}:\n{result.stderr}")
