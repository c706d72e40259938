"""Pure functions from a LimeCluster to the Kubernetes objects that run it (no I/O here)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from limedb_operator import tls

GROUP = "limedb.io"
VERSION = "v1alpha1"
PLURAL = "limeclusters"
KIND = "LimeCluster"

HTTP_PORT = 8484
INTERNAL_PORT = 9484
RESP_PORT = 6379
DATA_DIR = "/data"
RUN_AS = 10001
SEED_COUNT = 3
FINALIZER = "limedb.io/pvc-retention"

DEFAULTS: dict[str, Any] = {
    "nodes": 3,
    "image": "ghcr.io/limedb/limedb:0.1.0",
    "imagePullPolicy": "IfNotPresent",
    "replicationFactor": 3,
    "consistency": "quorum",
    "vnodes": 256,
    "durability": "sync",
    "storage": {"size": "10Gi"},
    "pvcRetention": {"whenScaled": "Delete", "whenDeleted": "Retain"},
}

Obj = dict[str, Any]


def with_defaults(spec: Mapping[str, Any]) -> Obj:
    """The spec with the CRD's defaults filled in (the API server does this too; tests and
    clusters whose CRD is older may not)."""
    out = copy.deepcopy(dict(spec))
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            merged = dict(value)
            merged.update(out.get(key) or {})
            out[key] = merged
        else:
            out.setdefault(key, value)
    return out


def headless_service_name(name: str) -> str:
    return f"{name}-headless"


def secret_name(name: str) -> str:
    return f"{name}-secret"


def resp_secret_name(name: str) -> str:
    return f"{name}-resp-password"


CLUSTER_SECRET_KEY = "cluster-secret"
RESP_PASSWORD_KEY = "password"


def admin_secret_name(name: str) -> str:
    """The Secret the operator generates for user `admin` when spec.auth has no adminSecretRef."""
    return f"{name}-admin"


ADMIN_PASSWORD_KEY = "password"


def admin_secret(name: str, spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Secret name, key) holding user `admin`'s password: `spec.auth.adminSecretRef` when given,
    else the generated `<name>-admin` when spec.auth is enabled; None for a cluster without
    users (the operator's admin calls then use the cluster secret, which the nodes accept until
    the first user exists; users added by hand to such a cluster need an adminSecretRef, else the
    operator reports AdminCredentialsRejected). The generated Secret outlives the LimeCluster
    while its volumes do (`owns_generated_secret`)."""
    ref = (spec.get("auth") or {}).get("adminSecretRef") or {}
    if ref.get("name"):
        return str(ref["name"]), str(ref.get("key") or ADMIN_PASSWORD_KEY)
    if generates_admin_secret(spec):
        return admin_secret_name(name), ADMIN_PASSWORD_KEY
    return None


ADMIN_USER = "admin"  # the user LIMEDB_BOOTSTRAP_ADMIN_PASSWORD creates (limedb.auth)


def generates_admin_secret(spec: Mapping[str, Any]) -> bool:
    """Whether the operator makes `<name>-admin`: auth enabled and no adminSecretRef."""
    auth = spec.get("auth") or {}
    return bool(auth.get("enabled")) and not (auth.get("adminSecretRef") or {}).get("name")


def owns_generated_secret(kind: str, spec: Mapping[str, Any]) -> bool:
    """Whether the LimeCluster owns its generated Secret `kind` (the garbage collector deletes
    it with the LimeCluster). Not `<name>-admin` while pvcRetention.whenDeleted is Retain: the
    users stored on the retained volumes keep the admin's password, so a LimeCluster made again
    on them must find the same one (the operator reads the Secret it finds)."""
    return kind != "admin" or spec["pvcRetention"]["whenDeleted"] != "Retain"


def pod_name(name: str, ordinal: int) -> str:
    return f"{name}-{ordinal}"


def pvc_name(name: str, ordinal: int) -> str:
    return f"data-{name}-{ordinal}"


def claim_ordinal(name: str, claim: str) -> int | None:
    """The ordinal of a data claim (`pvc_name` read back), or None when it is not one of
    `name`'s data claims."""
    return ordinal_of(f"data-{name}", claim)


def ordinal_of(name: str, pod: str) -> int | None:
    """The StatefulSet ordinal of `pod`, or None when it is not one of `name`'s pods."""
    prefix = f"{name}-"
    if not pod.startswith(prefix) or not pod[len(prefix) :].isdigit():
        return None
    return int(pod[len(prefix) :])


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "limedb", "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "node",
        "app.kubernetes.io/managed-by": "limedb-operator",
    }


def node_host(name: str, namespace: str, ordinal: int) -> str:
    """The stable DNS name of a pod in the headless service (its TLS certificate names it)."""
    return f"{pod_name(name, ordinal)}.{headless_service_name(name)}.{namespace}.svc"


def node_url(name: str, namespace: str, ordinal: int, scheme: str = "http") -> str:
    """A node's identity and address: the stable DNS name of its pod in the headless service.
    LimeDB keys ring members by URL, so identity follows the pod name and survives restarts
    and IP changes (the IP behind the name changes, the name does not). `scheme` is https
    with spec.tls enabled (tls.scheme)."""
    return f"{scheme}://{node_host(name, namespace, ordinal)}:{HTTP_PORT}"


def pod_of_node(node_id: str) -> str:
    """The pod name inside a node URL (http://<pod>.<svc>.<ns>.svc:8484)."""
    host = node_id.split("://", 1)[-1]
    return host.split(".", 1)[0].split(":", 1)[0]


def seed_urls(name: str, namespace: str, founders: int, scheme: str = "http") -> list[str]:
    """The founding members: the pods that formed the cluster when it was created. They boot
    a static ring of exactly these URLs; every later node learns the ring from them and waits
    to be joined. Headless-service names resolve before pods are Ready
    (publishNotReadyAddresses)."""
    return [node_url(name, namespace, i, scheme) for i in range(max(1, founders))]


# Does a ring exist that leaves this node out? Asked of the other founders before a founding
# pod with an empty volume boots the static ring: true when the pod is re-created after its
# node left (a scale-down and up again), so that it waits to be joined instead of resurrecting
# the founders' first ring. At the cluster's birth nobody has a ring without it.
_RING_WITHOUT_ME = """\
import os, sys
from limedb.client import Client, Unauthorized
me = os.environ["LIMEDB_ADVERTISE_URL"]
ca = os.environ.get("LIMEDB_TLS_CA") or None
# As user admin (once users exist the secret opens no admin route), else the secret alone.
ways = [dict(cluster_secret=os.environ.get("LIMEDB_CLUSTER_SECRET"))]
if os.environ.get("LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"):
    ways.insert(0, dict(user="admin", password=os.environ["LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"]))
for seed in os.environ.get("LIMEDB_SEEDS", "").split(","):
    if not seed or seed == me:
        continue
    status = None
    for way in ways:
        try:
            with Client(seed, ca=ca, timeout=2, retries=0, **way) as c:
                status = c.admin_status()
            break
        except Unauthorized:
            continue
        except Exception:
            break
    if status is None:
        continue
    members = {m.get("node_id") for m in status.get("members") or []}
    if status.get("epoch", 0) > 0 and members and me not in members:
        sys.exit(0)
sys.exit(1)
"""

# A founding pod (its own URL among the seeds) starts in the static ring of the founders; any
# other pod starts outside the ring and waits for the operator to join it. A node that already
# has a ring record on its volume ignores both and resumes from the record.
NODE_ENTRYPOINT = f"""\
export LIMEDB_AWAIT_JOIN=true
case ",$LIMEDB_SEEDS," in
  *",$LIMEDB_ADVERTISE_URL,"*)
    if [ -e "$LIMEDB_DATA_DIR/ring.json" ] || ! python3 -c '{_RING_WITHOUT_ME}'; then
      export LIMEDB_AWAIT_JOIN=false
    fi ;;
esac
exec limedb serve
"""


def _meta(name: str, namespace: str, obj_name: str) -> Obj:
    return {"name": obj_name, "namespace": namespace, "labels": labels(name)}


# Which of a cluster's two Services an object is; the chart's ServiceMonitor scrapes every pod
# once, through the headless one (it lists every pod, ready or not).
SERVICE_ROLE_LABEL = "limedb.io/service"
# On the headless Service of a cluster whose nodes serve HTTPS: the chart's ServiceMonitor
# (plaintext) leaves it out, the cluster's own one (limedb_operator.monitoring) scrapes it.
TLS_LABEL = "limedb.io/tls"


def _service_meta(name: str, namespace: str, obj_name: str, role: str) -> Obj:
    meta = _meta(name, namespace, obj_name)
    meta["labels"][SERVICE_ROLE_LABEL] = role
    return meta


def headless_service(name: str, namespace: str, spec: Mapping[str, Any]) -> Obj:
    meta = _service_meta(name, namespace, headless_service_name(name), "headless")
    if tls.enabled(spec):
        meta["labels"][TLS_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            # Seeds must resolve while the cluster is still forming, before any pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "internal", "port": INTERNAL_PORT, "targetPort": "internal"},
            ],
        },
    }


def client_service(name: str, namespace: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _service_meta(name, namespace, name, "client"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "resp", "port": RESP_PORT, "targetPort": "resp"},
            ],
        },
    }


def pod_disruption_budget(name: str, namespace: str) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }


# The Secrets the operator generates once per cluster: kind -> (object name, key). Distinct
# values: the RESP password is handed to applications (without it a node listening beyond
# loopback would answer other pods' RESP clients only with DENIED); the cluster secret of the
# internal and admin routes never leaves the pods and the operator.
GENERATED_SECRETS: dict[str, tuple[Callable[[str], str], str]] = {
    "cluster": (secret_name, CLUSTER_SECRET_KEY),
    "resp": (resp_secret_name, RESP_PASSWORD_KEY),
    # Unless spec.auth names an adminSecretRef (reconcile asks for it then).
    "admin": (admin_secret_name, ADMIN_PASSWORD_KEY),
}


def generated_secret(kind: str, name: str, namespace: str, token: str) -> Obj:
    """One of GENERATED_SECRETS holding `token`, which comes from the caller so this stays pure
    (the operator draws it from `secrets.token_urlsafe`)."""
    object_name, key = GENERATED_SECRETS[kind]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace, object_name(name)),
        "type": "Opaque",
        "stringData": {key: token},
    }


def node_env(name: str, namespace: str, spec: Mapping[str, Any], founders: int) -> list[Obj]:
    """Environment of a node container; only names that limedb.config knows (it refuses
    unknown LIMEDB_* variables) plus the downward-API helpers they are built from."""

    def field(path: str) -> Obj:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    scheme = tls.scheme(spec)

    env: list[Obj] = [
        {"name": "POD_NAME", **field("metadata.name")},
        {
            "name": "LIMEDB_ADVERTISE_URL",
            "value": f"{scheme}://$(POD_NAME).{headless_service_name(name)}.{namespace}.svc:{HTTP_PORT}",
        },
        # Identity is the URL (LimeDB keys ring members by URL), which follows the pod name.
        {"name": "LIMEDB_NODE_ID", "value": "$(LIMEDB_ADVERTISE_URL)"},
        {"name": "LIMEDB_HOST", "value": "0.0.0.0"},
        {"name": "LIMEDB_PORT", "value": str(HTTP_PORT)},
        {"name": "LIMEDB_INTERNAL_PORT", "value": str(INTERNAL_PORT)},
        {"name": "LIMEDB_RESP_PORT", "value": str(RESP_PORT)},
        {"name": "LIMEDB_DATA_DIR", "value": DATA_DIR},
        {"name": "LIMEDB_SEEDS", "value": ",".join(seed_urls(name, namespace, founders, scheme))},
        {"name": "LIMEDB_VNODES", "value": str(spec["vnodes"])},
        {"name": "LIMEDB_REPLICATION_FACTOR", "value": str(spec["replicationFactor"])},
        {"name": "LIMEDB_READ_CONSISTENCY", "value": spec["consistency"]},
        {"name": "LIMEDB_WRITE_CONSISTENCY", "value": spec["consistency"]},
        {"name": "LIMEDB_DURABILITY", "value": spec["durability"]},
        {
            "name": "LIMEDB_CLUSTER_SECRET",
            "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": CLUSTER_SECRET_KEY}},
        },
        {
            "name": "LIMEDB_RESP_PASSWORD",
            "valueFrom": {
                "secretKeyRef": {"name": resp_secret_name(name), "key": RESP_PASSWORD_KEY}
            },
        },
    ]
    env.extend(auth_env(name, spec))
    env.extend(tls.env(spec))
    if spec.get("autoReplace") is False:
        # Set only to opt out: the default template stays as it was (no restart to add it).
        env.append({"name": "LIMEDB_AUTO_REPLACE", "value": "false"})
    own = {e["name"] for e in env}
    # User variables come last so `$(VAR)` references to ours resolve; they may not override
    # what the operator relies on (identity, address, secrets).
    env.extend(copy.deepcopy(e) for e in spec.get("env") or [] if e["name"] not in own)
    return env


def auth_env(name: str, spec: Mapping[str, Any]) -> list[Obj]:
    """spec.auth as node settings: `enabled` -> auth_mode required (data routes and RESP need a
    user); the first admin's password from the admin Secret when there is one (docs/security.md)."""
    env: list[Obj] = []
    if (spec.get("auth") or {}).get("enabled"):
        env.append({"name": "LIMEDB_AUTH_MODE", "value": "required"})
    admin = admin_secret(name, spec)
    if admin is None:
        return env
    secret, key = admin
    env.append(
        {
            "name": "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        }
    )
    return env


def _probe(path: str, period: int, failures: int, scheme: str) -> Obj:
    get: Obj = {"path": path, "port": "http"}
    if scheme == "https":
        # With TLS the kubelet probes over HTTPS: it does not check the certificate, and the
        # node needs no plaintext port for it (docs/kubernetes.md, "TLS").
        get["scheme"] = "HTTPS"
    return {
        "httpGet": get,
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def pod_security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _placement(name: str, placement: Mapping[str, Any]) -> Obj:
    out: Obj = {}
    if placement.get("affinity"):
        out["affinity"] = copy.deepcopy(placement["affinity"])
    if placement.get("tolerations"):
        out["tolerations"] = copy.deepcopy(placement["tolerations"])
    if placement.get("nodeSelector"):
        out["nodeSelector"] = dict(placement["nodeSelector"])
    if "topologySpreadConstraints" in placement:
        out["topologySpreadConstraints"] = copy.deepcopy(placement["topologySpreadConstraints"])
    else:
        # Replicas of a key should not share a zone or a machine when the cluster allows it.
        out["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
            }
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
        ]
    return out


def statefulset(
    name: str, namespace: str, spec: Mapping[str, Any], replicas: int, founders: int | None = None
) -> Obj:
    """The StatefulSet with `replicas` pods: the operator, not spec.nodes, decides the count,
    because a scale-down may only shrink it after the leaving node handed off its data.
    `founders` is the size the cluster was created with (default: spec.nodes)."""
    spec = with_defaults(spec)
    founders = spec["nodes"] if founders is None else founders
    storage = spec["storage"]
    scheme = tls.scheme(spec)
    pvc_spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage["size"]}},
    }
    if storage.get("storageClassName"):
        pvc_spec["storageClassName"] = storage["storageClassName"]
    container: Obj = {
        "name": "limedb",
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["/bin/sh", "-c", NODE_ENTRYPOINT],
        "env": node_env(name, namespace, spec, founders),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
            {"name": "resp", "containerPort": RESP_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/readyz", 5, 3, scheme),
        "livenessProbe": _probe("/livez", 10, 6, scheme),
        # WAL replay after a crash may take a while; do not kill a node that is recovering.
        "startupProbe": _probe("/livez", 2, 150, scheme),
        "securityContext": container_security_context(),
        # A node that refuses to start (a ring record of a newer format) says why in its last
        # log lines; the operator reads them here (limedb_operator.rolling).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if spec.get("resources"):
        container["resources"] = copy.deepcopy(spec["resources"])
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    tls_volume, tls_mount = tls.volume(name, spec), tls.volume_mount(spec)
    if tls_volume is not None and tls_mount is not None:
        volumes.append(tls_volume)
        container["volumeMounts"].append(tls_mount)
    retention = spec["pvcRetention"]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, namespace, name),
        "spec": {
            "replicas": replicas,
            "serviceName": headless_service_name(name),
            # Parallel: new pods start together; ordering of membership changes is the
            # operator's job (join one at a time), not the StatefulSet controller's.
            "podManagementPolicy": "Parallel",
            # OnDelete: a template change makes a new revision, and the operator moves each pod
            # to it when the cluster can spare the pod (limedb_operator.rolling), highest
            # ordinal first, never the StatefulSet controller on its own.
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector_labels(name)},
            "persistentVolumeClaimRetentionPolicy": {
                "whenScaled": retention["whenScaled"],
                "whenDeleted": retention["whenDeleted"],
            },
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                        **({"prometheus.io/scheme": "https"} if scheme == "https" else {}),
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                    **_placement(name, spec.get("placement") or {}),
                },
            },
            "volumeClaimTemplates": [
                {"metadata": {"name": "data", "labels": labels(name)}, "spec": pvc_spec}
            ],
        },
    }


def owner_reference(body: Mapping[str, Any]) -> Obj:
    """Makes a child garbage-collected with its LimeCluster."""
    meta = body["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def children(
    name: str, namespace: str, spec: Mapping[str, Any], replicas: int, founders: int | None = None
) -> list[Obj]:
    """Every object the operator keeps in place, except the secret (created once)."""
    return [
        headless_service(name, namespace, spec),
        client_service(name, namespace),
        pod_disruption_budget(name, namespace),
        statefulset(name, namespace, spec, replicas, founders),
    ]
