"""Benchmark support: a throwaway CA and a node certificate for 127.0.0.1 (made with `openssl`),
for the TLS variants of bench_http.py and bench_cluster.py, and the settings that turn TLS on.

Not a benchmark itself (run_all.py runs only bench_*.py).
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(directory: Path) -> dict[str, str]:
    """A CA and a certificate for IP 127.0.0.1 / localhost in `directory`; returns the
    environment of a node with `tls_mode required` on them."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=bench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("req", *KEY, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node",
             cwd=directory)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", "1", "-days", "2", "-extfile", "ext.cnf", "-out", "node.crt",
        cwd=directory,
    )  # fmt: skip
    return {
        "LIMEDB_TLS_CERT": str(directory / "node.crt"),
        "LIMEDB_TLS_KEY": str(directory / "node.key"),
        "LIMEDB_TLS_CA": str(directory / "ca.crt"),
        "LIMEDB_TLS_MODE": "required",
    }


def verify(env: dict[str, str]) -> ssl.SSLContext | bool:
    """httpx's `verify` for nodes started with `env` (True: plaintext nodes, nothing to check)."""
    ca = env.get("LIMEDB_TLS_CA")
    return ssl.create_default_context(cafile=ca) if ca else True
