"""The operator's side of `spec.tls`: keep the CA and the pods' certificates in their Secrets
before the pods that mount them start, and tell reconcile which CA the nodes chain to.

Decisions are certificates.serving_plan's (pure); this module reads and writes the Secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from limedb_operator import certificates, manifests, tls
from limedb_operator.kube import Kube

log = logging.getLogger(__name__)


def wanted_names(name: str, namespace: str, ordinals: Iterable[int]) -> dict[str, list[str]]:
    """Pod -> the DNS names its certificate must cover."""
    headless = manifests.headless_service_name(name)
    return {
        manifests.pod_name(name, o): certificates.pod_names(
            name, namespace, manifests.pod_name(name, o), headless
        )
        for o in ordinals
    }


def _ca(kube: Kube, name: str, namespace: str, owner: Mapping[str, Any]) -> certificates.KeyPair:
    secret = tls.ca_secret_name(name)
    for _ in range(2):
        found = kube.versioned_secret(secret, namespace)
        if found is not None:
            data, _version = found
            return certificates.KeyPair(
                data[certificates.CA_CERT_KEY], data[certificates.CA_KEY_KEY]
            )
        pair = certificates.new_ca(name, namespace, datetime.now(UTC))
        data = {certificates.CA_CERT_KEY: pair.cert_pem, certificates.CA_KEY_KEY: pair.key_pem}
        if kube.write_secret(secret, namespace, data, owner):
            return pair
        # Another reconcile created it first: read theirs.
    raise RuntimeError(f"cannot create or read the Secret {secret}")


def ensure(
    kube: Kube,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    owner: Mapping[str, Any],
    pods: int,
) -> str | None:
    """Makes the TLS material of pods 0..pods-1 current; returns the CA (PEM) the nodes'
    certificates chain to, or None without TLS. The user's Secret (issuer secretName) is only
    read: its `ca.crt` is the CA."""
    kind = tls.issuer(spec)
    if kind is None:
        return None
    if kind == tls.FROM_SECRET:
        secret = tls.serving_secret_name(name, spec) or ""
        found = kube.versioned_secret(secret, namespace)
        if found is None or tls.CA_FILE not in found[0]:
            raise RuntimeError(f"spec.tls.secretName: Secret {secret} with ca.crt not found")
        return found[0][tls.CA_FILE]
    ca = _ca(kube, name, namespace, owner)
    secret = tls.serving_secret_name(name, spec) or ""
    found = kube.versioned_secret(secret, namespace)
    current, version = found if found is not None else ({}, None)
    plan = certificates.serving_plan(
        ca, current, wanted_names(name, namespace, range(pods)), datetime.now(UTC)
    )
    if plan is not None:
        issued = sorted(k[:-4] for k in plan if k.endswith(".crt") and plan[k] != current.get(k))
        if kube.write_secret(secret, namespace, plan, owner, version):
            log.info("%s/%s: certificates issued for %s", namespace, name, ", ".join(issued))
    return ca.cert_pem


def current_ca(kube: Kube, name: str, namespace: str, spec: Mapping[str, Any]) -> str | None:
    """The CA (PEM) the nodes of a cluster with spec.tls chain to, as far as it exists (read
    only); None without TLS or before the operator made it."""
    kind = tls.issuer(spec)
    if kind is None:
        return None
    secret = (
        tls.ca_secret_name(name) if kind == tls.SELF_SIGNED else tls.serving_secret_name(name, spec)
    )
    found = kube.secret_data(secret or "", namespace)
    return None if found is None else found.get(certificates.CA_CERT_KEY)
