"""Helpers of the k8s end-to-end tests: LimeCluster status waits, pod URLs, a 20k-key data set."""

from __future__ import annotations

import base64

import kubernetes
from k8swait import wait_for
from limedb.client import Client

G, V, P = "limedb.io", "v1alpha1", "limeclusters"
KEYS = 20_000
BATCH = 1000


def lime(api, namespace, name="lime"):
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        G, V, namespace, P, name
    )


def patch_spec(api, namespace, spec, name="lime"):
    kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
        G, V, namespace, P, name, {"spec": spec}
    )


def condition(obj, kind):
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def events(api, namespace):
    listed = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.kind=LimeCluster"
    )
    return [(e.reason, e.message) for e in listed.items]


def secret_of(api, namespace):
    s = kubernetes.client.CoreV1Api(api).read_namespaced_secret("lime-secret", namespace)
    return base64.b64decode(s.data["cluster-secret"]).decode()


def resp_password_of(api, namespace):
    s = kubernetes.client.CoreV1Api(api).read_namespaced_secret("lime-resp-password", namespace)
    return base64.b64decode(s.data["password"]).decode()


def converged(api, namespace, nodes, operator, runner, timeout=240.0, phases=None):
    """Wait until status says `nodes` Ready Normal members, Available, not Progressing; the
    phases seen on the way are added to `phases`."""

    def done():
        obj = lime(api, namespace)
        st = obj.get("status") or {}
        if phases is not None and st.get("phase"):
            phases.add(st["phase"])
        members = [m for m in st.get("members", []) if m["state"] == "Normal"]
        pods = (
            kubernetes.client.CoreV1Api(api)
            .list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=limedb")
            .items
        )
        ok = (
            len(pods) == nodes
            and st.get("nodes") == nodes
            and st.get("readyNodes") == nodes
            and len(members) == nodes
            and st.get("phase") == "Running"
            and (condition(obj, "Available") or {}).get("status") == "True"
            and (condition(obj, "Progressing") or {}).get("status") == "False"
        )
        return ok and obj

    return wait_for(
        done,
        timeout=timeout,
        interval=0.25,
        what=lambda: (
            f"{nodes} Normal Ready nodes; status={lime(api, namespace).get('status')}\n"
            f"operator:\n{operator.log_tail(15)}\nrunner errors: {runner.errors}"
        ),
    )


def pod_url(api, namespace, ordinal=0):
    pod = kubernetes.client.CoreV1Api(api).read_namespaced_pod(f"lime-{ordinal}", namespace)
    return f"http://{pod.status.pod_ip}:8484"


def value_of(i: int, value_bytes: int) -> str:
    return f"value-{i}-".ljust(value_bytes, "x")


def write_keys(url: str, value_bytes: int = 0) -> None:
    with Client(url, timeout=30) as c:
        for start in range(0, KEYS, BATCH):
            c.batch(put={f"key-{i}": value_of(i, value_bytes) for i in range(start, start + BATCH)})


def assert_all_keys(url: str, value_bytes: int = 0) -> None:
    missing = []
    with Client(url, timeout=30) as c:
        for start in range(0, KEYS, BATCH):
            names = [f"key-{i}" for i in range(start, start + BATCH)]
            got = c.batch(get=names)
            missing += [
                k for k in names if got.get(k) != value_of(int(k[4:]), value_bytes).encode()
            ]
    assert not missing, f"{len(missing)} keys lost, e.g. {missing[:5]}"
