"""Certificates for TLS tests, made with the `openssl` command (Debian's, scripts/system-deps.sh):
a CA, and node certificates it signs whose subjectAltNames are the node's addresses and whose
serial number the test chooses, so a test can tell which certificate a handshake presented.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeCert:
    cert: Path
    key: Path
    ca: Path
    serial: int


def make_ca(directory: Path, name: str) -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *KEY_ARGS, "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return CA(cert, key)


def issue(ca: CA, directory: Path, name: str, hosts: list[str], serial: int) -> NodeCert:
    """A certificate for `hosts` (IP addresses or DNS names) signed by `ca`, with `serial`,
    usable as server and client certificate (the node's RPC is mutual TLS). The files are
    written next to each other and then renamed over `name`.crt / `name`.key, so a node that
    polls them never reads half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / f".{name}.{serial}"
    work.mkdir()
    sans = ",".join(
        f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
    )
    ext = work / "ext.cnf"
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", *KEY_ARGS, "-keyout", "node.key", "-out", "node.csr", "-subj", f"/CN={name}",
        cwd=work,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "node.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(serial), "-days", "2", "-extfile", "ext.cnf", "-out", "node.crt",
        cwd=work,
    )  # fmt: skip
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    # Key first: a node that sees the new certificate with the old key does not load the pair
    # and tries again at its next poll.
    os.replace(work / "node.key", key)
    os.replace(work / "node.crt", cert)
    return NodeCert(cert, key, ca.cert, serial)


def client_context(ca: Path, cert: NodeCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def served_serial(host: str, port: int, ca: Path, cert: NodeCert | None = None) -> int:
    """The serial number of the certificate a new TLS handshake with host:port presents."""
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        client_context(ca, cert).wrap_socket(raw, server_hostname=host) as tls,
    ):
        return int(tls.getpeercert()["serialNumber"], 16)
