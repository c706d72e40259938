"""How the operator authenticates to a cluster's nodes (database.Access): user `admin` with the
password of the cluster's admin Secret, the cluster secret, and the CA of spec.tls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limedb_operator import database, manifests
from limedb_operator.kube import Kube


def admin_password(kube: Kube, name: str, namespace: str, spec: Mapping[str, Any]) -> str | None:
    """User admin's password from the admin Secret (manifests.admin_secret); None while it or
    its key is missing (the pods cannot start then either), or for a cluster without users."""
    admin = manifests.admin_secret(name, spec)
    if admin is None:
        return None
    secret, key = admin
    data = kube.secret_data(secret, namespace)
    return None if data is None else data.get(key)


def cluster_access(
    kube: Kube,
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    cluster_secret: str | None,
    ca_pem: str | None,
) -> database.Access:
    admin = manifests.admin_secret(name, spec)
    return database.Access(
        cluster_secret,
        ca_pem,
        admin_password(kube, name, namespace, spec),
        "" if admin is None else f"{namespace}/{admin[0]} (key {admin[1]})",
    )
