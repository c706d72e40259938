"""The node's TLS material: certificate, key and CA read from disk into SSL contexts, and read
again whenever one of the files changes (rotation without a restart).

One flag set serves the three listeners (HTTP, RESP, internal RPC) and every outgoing
connection of the node (RPC to peers, its HTTP calls to peers). Three contexts are built
together from the same files:
- `public_server`: the HTTP and RESP listeners; clients need no certificate.
- `internal_server`: the RPC listener; mutual TLS, the peer's certificate must chain to the CA.
- `client`: what the node dials with; verifies the peer against the CA (host name included)
  and presents the node's own certificate.

A rotation swaps all three at once; listeners ask for the current context at every accept, so
new handshakes show the new certificate while established connections carry on with theirs.
A set of files that does not load (a half-written key, a certificate without its key) is
logged and skipped: the node keeps the last good contexts and tries again on the next change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from limedb.certificate import CertificateFacts, first_certificate_facts

log = logging.getLogger("limedb.tls")

MODES = ("off", "on", "required")
LISTENERS = ("http", "resp", "internal")
POLL_S = 1.0


@dataclass(frozen=True)
class TlsFiles:
    """Where the certificate (chain), its key and the CA bundle are."""

    cert: str
    key: str
    ca: str

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """(mtime ns, size, inode) of each file: changes whenever a file is rewritten or
        replaced (a Kubernetes Secret volume swaps a symlink, which changes the inode)."""
        stamps = []
        for path in (self.cert, self.key, self.ca):
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


@dataclass(frozen=True)
class Contexts:
    public_server: ssl.SSLContext
    internal_server: ssl.SSLContext
    client: ssl.SSLContext


def _base(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def build_contexts(files: TlsFiles) -> Contexts:
    """The three contexts from `files`; raises OSError / ssl.SSLError when they do not load."""
    public = _base(ssl.PROTOCOL_TLS_SERVER)
    public.load_cert_chain(files.cert, files.key)
    internal = _base(ssl.PROTOCOL_TLS_SERVER)
    internal.load_cert_chain(files.cert, files.key)
    internal.load_verify_locations(cafile=files.ca)
    internal.verify_mode = ssl.CERT_REQUIRED
    client = _base(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    client.load_cert_chain(files.cert, files.key)
    client.load_verify_locations(cafile=files.ca)
    return Contexts(public, internal, client)


def _facts(cert_path: str) -> CertificateFacts | None:
    try:
        return first_certificate_facts(cert_path)
    except (OSError, ValueError) as exc:
        log.warning("cannot read the serial and expiry of %s: %s", cert_path, exc)
        return None


class TlsMaterial:
    """The current contexts of a node, reloaded when the files change on disk."""

    def __init__(self, files: TlsFiles, modes: dict[str, str]) -> None:
        unknown = {m for m in modes.values()} - set(MODES)
        if set(modes) - set(LISTENERS) or unknown or all(m == "off" for m in modes.values()):
            raise ValueError(f"TlsMaterial needs a mode on or required, got {modes!r}")
        self.files = files
        self.modes = {name: modes.get(name, "off") for name in LISTENERS}
        self._stamp = files.stamp()
        self.contexts = build_contexts(files)  # the first load must succeed: a start fails
        self.facts = _facts(files.cert)
        self.reloads = 0
        self.reload_failures = 0
        # The listeners serving with these contexts, by name ("http", "resp", "internal"):
        # their counters go to /metrics (limedb.tls_metrics).
        self.listeners: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config) -> TlsMaterial | None:
        """The material of a node's Config (None when every listener's mode is off)."""
        modes = {
            "http": config.http_tls_mode,
            "resp": config.resp_tls_mode,
            "internal": config.internal_tls_mode,
        }
        if all(mode == "off" for mode in modes.values()):
            return None
        return cls(TlsFiles(config.tls_cert, config.tls_key, config.tls_ca), modes)

    def serves(self, listener: str) -> bool:
        """Whether `listener` ("http", "resp", "internal") takes TLS (for "internal": also
        whether the node dials its peers with TLS)."""
        return self.modes[listener] != "off"

    def takes_plaintext(self, listener: str) -> bool:
        return self.modes[listener] != "required"

    def server_context(self, listener: str) -> ssl.SSLContext:
        """The current context `listener` serves with: mutual TLS on "internal"."""
        return (
            self.contexts.internal_server if listener == "internal" else self.contexts.public_server
        )

    def refresh(self) -> bool:
        """Reload when a file changed since the last load; True when new contexts are in use."""
        try:
            stamp = self.files.stamp()
        except OSError as exc:
            log.warning("TLS files not readable, keeping the current certificate: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            contexts = build_contexts(self.files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Often a rotation caught halfway (the certificate written, its key not yet):
            # the stamp is not taken, so the next poll tries again.
            self.reload_failures += 1
            log.warning("TLS files changed but do not load yet, keeping the current: %s", exc)
            return False
        self._stamp = stamp
        self.contexts = contexts
        self.facts = _facts(self.files.cert)
        self.reloads += 1
        serial = format(self.facts.serial, "x") if self.facts is not None else "?"
        log.info("TLS certificate (serial %s), key and CA reloaded from disk", serial)
        return True

    async def watch(self, interval_s: float = POLL_S) -> None:
        """Poll the files until cancelled (one stat per file per interval)."""
        while True:
            await asyncio.sleep(interval_s)
            self.refresh()
