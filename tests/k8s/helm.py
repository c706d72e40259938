"""Runs the helm binary built by scripts/k8s-tools.sh, isolated from the user's helm config."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml
from controlplane import ROOT, binary

CHART = ROOT / "charts" / "limedb"
KUBE_VERSION = "1.36.3"
_HOME = Path(tempfile.gettempdir()) / "limedb-test-helm"


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(_HOME / "cache"),
        "HELM_CONFIG_HOME": str(_HOME / "config"),
        "HELM_DATA_HOME": str(_HOME / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run(
        [str(binary("helm")), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(namespace: str = "limedb", *sets: str, include_crds: bool = False) -> list[dict]:
    args = ["template", "r", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]
