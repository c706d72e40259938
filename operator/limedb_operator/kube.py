"""Kubernetes I/O of the operator: server-side apply of children, reads of pods, volumes, secret."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1DeleteOptions,
    V1Preconditions,
)
from kubernetes.client.rest import ApiException

from limedb_operator import manifests, monitoring
from limedb_operator.scaling import PodView
from limedb_operator.volumes import ClaimView

FIELD_MANAGER = "limedb-operator"
REVISION_LABEL = "controller-revision-hash"  # set by the StatefulSet controller on each pod

_PATHS = {
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services/{name}",
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets/{name}",
    (
        "policy/v1",
        "PodDisruptionBudget",
    ): "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}",
    ("apps/v1", "StatefulSet"): "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    (
        monitoring.API_VERSION,
        monitoring.KIND,
    ): "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/{name}",
}


def request(
    api: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """A raw API call for what the typed client lacks (server-side apply, Table output)."""
    method, url, header_params, body, post_params = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", **(headers or {})},
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(method, url, header_params, body, post_params)
    resp.read()
    text = resp.data.decode() if resp.data else ""
    if not 200 <= resp.status < 300:
        raise ApiException.from_response(http_resp=resp, body=text, data=None)
    return json.loads(text) if text else None


def _last_termination(pod: Any) -> str:
    """The message of the node container's last termination (its log tail when it failed)."""
    for status in (pod.status and pod.status.container_statuses) or []:
        last = status.last_state and status.last_state.terminated
        current = status.state and status.state.terminated
        for term in (current, last):
            if term is not None and term.message:
                return str(term.message)
    return ""


def load_config() -> None:
    """In a pod: the service account; elsewhere: $KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class Kube:
    """The few API calls the operator makes (see the chart's Role: nothing more is granted)."""

    def __init__(
        self, api: ApiClient | None = None, service_monitors: monitoring.Settings | None = None
    ) -> None:
        self.api = api or ApiClient()
        # The chart's monitoring settings: TLS clusters get a ServiceMonitor each (None: off).
        self.service_monitors = service_monitors
        self.core = CoreV1Api(self.api)
        self.apps = AppsV1Api(self.api)
        self.custom = CustomObjectsApi(self.api)

    def apply(self, obj: Mapping[str, Any], owner: Mapping[str, Any]) -> None:
        """Server-side apply: declarative, idempotent, and it drops fields we stop setting."""
        body = dict(obj)
        body["metadata"] = {
            **obj["metadata"],
            "ownerReferences": [manifests.owner_reference(owner)],
        }
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(
            ns=obj["metadata"]["namespace"], name=obj["metadata"]["name"]
        )
        request(
            self.api,
            "PATCH",
            path,
            # JSON is YAML: the body is sent as JSON under the apply content type.
            body=json.dumps(body),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            headers={"Content-Type": "application/apply-patch+yaml"},
        )

    def statefulset(self, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            sts = self.apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return self.api.sanitize_for_serialization(sts)

    def pods(self, name: str, namespace: str, scheme: str = "http") -> tuple[PodView, ...]:
        listed = self.core.list_namespaced_pod(
            namespace, label_selector=manifests.selector_string(name)
        )
        out = []
        for pod in listed.items:
            ordinal = manifests.ordinal_of(name, pod.metadata.name)
            if ordinal is None:
                continue
            conditions = (pod.status and pod.status.conditions) or []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            out.append(
                PodView(
                    name=pod.metadata.name,
                    ordinal=ordinal,
                    ip=pod.status.pod_ip if pod.status else None,
                    ready=ready,
                    terminating=pod.metadata.deletion_timestamp is not None,
                    scheme=scheme,
                    revision=(pod.metadata.labels or {}).get(REVISION_LABEL),
                    last_error=_last_termination(pod),
                )
            )
        return tuple(sorted(out, key=lambda p: p.ordinal))

    def delete_pod(self, pod: str, namespace: str, uid: str | None = None) -> None:
        """Delete a node pod (a rolling restart: the StatefulSet re-creates it at its update
        revision). With `uid`, only that incarnation (a precondition)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self.core.delete_namespaced_pod(pod, namespace, body=body)
        except ApiException as e:
            if e.status != 404:
                raise

    def claims(self, name: str, namespace: str) -> list[ClaimView]:
        listed = self.core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=manifests.selector_string(name)
        )
        out = []
        for pvc in listed.items:
            requests = (pvc.spec.resources and pvc.spec.resources.requests) or {}
            status = pvc.status
            capacity = (status and status.capacity) or {}
            conditions = tuple(
                (c.type, c.message or "") for c in (status and status.conditions) or []
            )
            out.append(
                ClaimView(
                    name=pvc.metadata.name,
                    requested=requests.get("storage"),
                    capacity=capacity.get("storage"),
                    bound=bool(status and status.phase == "Bound"),
                    conditions=conditions,
                )
            )
        return out

    def resize_claim(self, pvc: str, namespace: str, size: str) -> None:
        """Ask for a bigger volume (PVC expansion); the API refuses it for an unbound claim or
        a StorageClass without allowVolumeExpansion (ApiException carries its message)."""
        request(
            self.api,
            "PATCH",
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{pvc}",
            body={"spec": {"resources": {"requests": {"storage": size}}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    def delete_pvc(self, pvc: str, namespace: str) -> None:
        try:
            self.core.delete_namespaced_persistent_volume_claim(pvc, namespace)
        except ApiException as e:
            if e.status != 404:
                raise

    def generated_secret(
        self, kind: str, name: str, namespace: str, owner: Mapping[str, Any], owned: bool = True
    ) -> str:
        """The value of one of manifests.GENERATED_SECRETS, created on first use; read by name
        only (no list on secrets). `owned`: whether LimeCluster `owner` owns it (the garbage
        collector deletes it with the LimeCluster); a Secret found owned otherwise is changed."""
        object_name, key = manifests.GENERATED_SECRETS[kind]
        secret_name = object_name(name)
        try:
            found = self.core.read_namespaced_secret(secret_name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
        else:
            self._set_owned(found, owner, owned, namespace)
            return base64.b64decode(found.data[key]).decode()
        token = secrets.token_urlsafe(32)
        body = manifests.generated_secret(kind, name, namespace, token)
        if owned:
            body["metadata"]["ownerReferences"] = [manifests.owner_reference(owner)]
        try:
            self.core.create_namespaced_secret(namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise
            # Another reconcile won the race; use its token.
            found = self.core.read_namespaced_secret(secret_name, namespace)
            return base64.b64decode(found.data[key]).decode()
        return token

    def _set_owned(self, found: Any, owner: Mapping[str, Any], owned: bool, namespace: str) -> None:
        """Make LimeCluster `owner` own Secret `found`, or not (a conflict waits for the next
        tick); owner references of anything else are kept."""
        uid = owner["metadata"]["uid"]
        refs = found.metadata.owner_references or []
        if any(ref.uid == uid for ref in refs) == owned:
            return
        body = self.core.api_client.sanitize_for_serialization(found)
        kept = [ref for ref in body["metadata"].get("ownerReferences", []) if ref["uid"] != uid]
        body["metadata"]["ownerReferences"] = kept + (
            [manifests.owner_reference(owner)] if owned else []
        )
        try:
            self.core.replace_namespaced_secret(found.metadata.name, namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise

    def secret_data(self, name: str, namespace: str) -> dict[str, str] | None:
        """The decoded data of Secret `name` (read by name: no list on secrets), None if none."""
        try:
            found = self.core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}

    # LimeBackup and LimeBackupSchedule objects (group limedb.io, the operator's version).

    def lime_object(self, plural: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                manifests.GROUP, manifests.VERSION, namespace, plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def lime_objects(self, plural: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            manifests.GROUP, manifests.VERSION, namespace, plural, label_selector=selector
        )
        return list(listed.get("items") or [])

    def create_lime_object(self, plural: str, body: Mapping[str, Any]) -> bool:
        """Create `body`; False when it exists already (a retried tick)."""
        try:
            self.custom.create_namespaced_custom_object(
                manifests.GROUP, manifests.VERSION, body["metadata"]["namespace"], plural, body
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def delete_owned_service_monitor(self, name: str, namespace: str, owner_uid: str) -> str:
        """Delete the ServiceMonitor `name` if the object with `owner_uid` owns it (and it is
        still the one read: a precondition on its uid). Returns "deleted", "absent" (no such
        object, or no such CRD) or "foreign" (another owner, or none: left alone)."""
        group, version = monitoring.API_VERSION.split("/")
        try:
            found = self.custom.get_namespaced_custom_object(
                group, version, namespace, "servicemonitors", name
            )
        except ApiException as e:
            if e.status == 404:
                return "absent"
            raise
        meta = found.get("metadata") or {}
        if owner_uid not in {r.get("uid") for r in meta.get("ownerReferences") or []}:
            return "foreign"
        try:
            self.custom.delete_namespaced_custom_object(
                group,
                version,
                namespace,
                "servicemonitors",
                name,
                body=V1DeleteOptions(preconditions=V1Preconditions(uid=meta.get("uid"))),
            )
        except ApiException as e:
            if e.status == 404:
                return "absent"
            if e.status == 409:
                return "foreign"  # replaced meanwhile by another object of that name
            raise
        return "deleted"

    def delete_lime_object(self, plural: str, name: str, namespace: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                manifests.GROUP, manifests.VERSION, namespace, plural, name
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def versioned_secret(self, secret: str, namespace: str) -> tuple[dict[str, str], str] | None:
        """A Secret's data, decoded, and its resourceVersion; None when it does not exist."""
        try:
            found = self.core.read_namespaced_secret(secret, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}
        return data, found.metadata.resource_version

    def write_secret(
        self,
        secret: str,
        namespace: str,
        data: Mapping[str, str],
        owner: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> bool:
        """Create the Secret (resource_version None) or replace its data if it is still at
        `resource_version`; False when another writer came first (the next tick reads again)."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret,
                "namespace": namespace,
                "labels": manifests.labels(owner["metadata"]["name"]),
                "ownerReferences": [manifests.owner_reference(owner)],
            },
            "type": "Opaque",
            "stringData": dict(data),
        }
        try:
            if resource_version is None:
                self.core.create_namespaced_secret(namespace, body)
            else:
                body["metadata"]["resourceVersion"] = resource_version
                # stringData merges into data on write; a replace with data drops stale keys.
                body["data"] = {
                    k: base64.b64encode(v.encode()).decode()
                    for k, v in body.pop("stringData").items()
                }
                self.core.replace_namespaced_secret(secret, namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True
