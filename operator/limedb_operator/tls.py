"""Pure: `spec.tls` of a LimeCluster as what its pods run with (docs/kubernetes.md, "TLS").

`{enabled: true}` (issuer `self-signed`, the default): the operator's CA and per-pod
certificates from the Secret `<name>-tls` (limedb_operator.certificates). `{enabled: true,
issuer: secretName, secretName: S}`: the user's Secret S, whose `tls.crt` / `tls.key` every pod
serves and whose `ca.crt` every pod trusts. Either Secret is mounted read-only at TLS_DIR; the
node re-reads the files when the kubelet updates them (within a second of the change on disk),
so a rotation restarts nothing. Every listener then runs with `tls_mode required`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SELF_SIGNED, FROM_SECRET = "self-signed", "secretName"
TLS_DIR = "/etc/limedb/tls"
VOLUME = "tls"
CA_FILE = "ca.crt"

Obj = dict[str, Any]


def _tls(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return spec.get("tls") or {}


def enabled(spec: Mapping[str, Any]) -> bool:
    return bool(_tls(spec).get("enabled"))


def issuer(spec: Mapping[str, Any]) -> str | None:
    """None without TLS; else SELF_SIGNED or FROM_SECRET."""
    if not enabled(spec):
        return None
    tls = _tls(spec)
    explicit = tls.get("issuer")
    if explicit == FROM_SECRET or (not explicit and tls.get("secretName")):
        return FROM_SECRET
    return SELF_SIGNED


def scheme(spec: Mapping[str, Any]) -> str:
    return "https" if enabled(spec) else "http"


def ca_secret_name(name: str) -> str:
    """The self-signed issuer's CA (certificate and key); never mounted in a pod."""
    return f"{name}-ca"


def serving_secret_name(name: str, spec: Mapping[str, Any]) -> str | None:
    """The Secret mounted in every pod: `<name>-tls` (self-signed) or the user's."""
    kind = issuer(spec)
    if kind == SELF_SIGNED:
        return f"{name}-tls"
    if kind == FROM_SECRET:
        return str(_tls(spec)["secretName"])
    return None


def env(spec: Mapping[str, Any]) -> list[Obj]:
    """The node's TLS settings; `$(POD_NAME)` picks the pod's own certificate out of the
    self-signed issuer's Secret (one Secret for the StatefulSet's shared pod template)."""
    kind = issuer(spec)
    if kind is None:
        return []
    stem = "$(POD_NAME)" if kind == SELF_SIGNED else "tls"
    return [
        {"name": "LIMEDB_TLS_MODE", "value": "required"},
        {"name": "LIMEDB_TLS_CERT", "value": f"{TLS_DIR}/{stem}.crt"},
        {"name": "LIMEDB_TLS_KEY", "value": f"{TLS_DIR}/{stem}.key"},
        {"name": "LIMEDB_TLS_CA", "value": f"{TLS_DIR}/{CA_FILE}"},
    ]


def volume(name: str, spec: Mapping[str, Any]) -> Obj | None:
    secret = serving_secret_name(name, spec)
    if secret is None:
        return None
    # 0440 with the pod's fsGroup: the node (uid 10001, group 10001) reads the keys, others not.
    return {"name": VOLUME, "secret": {"secretName": secret, "defaultMode": 0o440}}


def volume_mount(spec: Mapping[str, Any]) -> Obj | None:
    if not enabled(spec):
        return None
    return {"name": VOLUME, "mountPath": TLS_DIR, "readOnly": True}
