"""Helpers of the control-plane tests (no running pods): LimeCluster reads and spec patches."""

from __future__ import annotations

import kubernetes

G, V, P = "limedb.io", "v1alpha1", "limeclusters"


def lime(api, namespace, name="lime"):
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        G, V, namespace, P, name
    )


def create(api, namespace, name="lime", **spec):
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "LimeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }
    return kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, namespace, P, body
    )


def events_for(api, namespace, name="lime"):
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [(e.type, e.reason, e.message) for e in listed.items]


def patch_spec(api, namespace, spec, name="lime"):
    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, P, name, {"spec": spec}
    )


def condition(obj, kind):
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def label_selector(selector: dict) -> str:
    """A LabelSelector (matchLabels, and matchExpressions of DoesNotExist, the only operator
    LimeDB's ServiceMonitors use) as the `-l` / label_selector string the API server reads."""
    parts = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "DoesNotExist", expr
        parts.append(f"!{expr['key']}")
    return ",".join(parts)
