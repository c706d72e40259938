"""The operator is SIGKILLed in the middle of a scale-down and restarted: it resumes from what
the database and the objects report, and the leaving node's pod disappears only after the node
has handed off every range. No key is lost."""

from __future__ import annotations

import threading

import kubernetes
import pytest
from k8swait import wait_for
from lime_helpers import G, P, V, assert_all_keys, converged, pod_url, secret_of, write_keys
from limedb.client import Client

pytestmark = pytest.mark.k8s


class Monitor(threading.Thread):
    """Samples (does pod lime-3 exist?, lime-3's ring state) until stopped."""

    def __init__(self, api, namespace: str, url: str, secret: str, node_id: str) -> None:
        super().__init__(daemon=True)
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace, self.url, self.secret, self.node_id = namespace, url, secret, node_id
        self.samples: list[tuple[bool, str]] = []
        self.stop_flag = threading.Event()

    def ring_state(self) -> str:
        with Client(self.url, cluster_secret=self.secret, timeout=5) as c:
            status = c.admin_status()
        states = {m["node_id"]: m["state"] for m in status["members"]}
        return states.get(self.node_id, "absent")

    def run(self) -> None:
        while not self.stop_flag.is_set():
            pods = {p.metadata.name for p in self.core.list_namespaced_pod(self.namespace).items}
            try:
                state = self.ring_state()
            except Exception:
                state = "unknown"
            self.samples.append(("lime-3" in pods, state))
            self.stop_flag.wait(0.1)


def test_operator_killed_during_scale_down_resumes_without_losing_keys(
    api, namespace, operator, runner
):
    objects = kubernetes.client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        G, V, namespace, P,
        {"apiVersion": f"{G}/{V}", "kind": "LimeCluster", "metadata": {"name": "lime"},
         "spec": {"nodes": 4, "replicationFactor": 3, "durability": "periodic", "vnodes": 16,
                  # Slow the hand-off down so that the kill lands in the middle of it.
                  "env": [{"name": "LIMEDB_STREAM_MB_PER_S", "value": "1"}]}},
    )  # fmt: skip
    converged(api, namespace, 4, operator, runner)
    write_keys(pod_url(api, namespace), value_bytes=256)
    secret = secret_of(api, namespace)
    leaving = f"http://lime-3.lime-headless.{namespace}.svc:8484"
    monitor = Monitor(api, namespace, pod_url(api, namespace), secret, leaving)
    monitor.start()
    try:
        objects.patch_namespaced_custom_object_scale(
            G, V, namespace, P, "lime", {"spec": {"replicas": 3}}
        )
        wait_for(lambda: monitor.ring_state() == "Leaving", timeout=60, what="lime-3 Leaving")
        operator.kill()
        assert monitor.ring_state() == "Leaving", "the kill must land during the hand-off"
        # With the operator dead the database finishes the hand-off on its own; the pod stays.
        wait_for(
            lambda: monitor.ring_state() in ("Left", "absent"),
            timeout=180,
            what="the database to finish the leave",
        )
        apps = kubernetes.client.AppsV1Api(api)
        assert apps.read_namespaced_stateful_set("lime", namespace).spec.replicas == 4
        operator.start()
        converged(api, namespace, 3, operator, runner)
    finally:
        monitor.stop_flag.set()
        monitor.join()
    assert_all_keys(pod_url(api, namespace, 2), value_bytes=256)
    gone = [state for exists, state in monitor.samples if not exists]
    assert gone, "the pod of the leaving node should be gone by the end"
    assert set(gone) <= {"Left", "absent"}, f"pod removed while the node was {set(gone)}"
    assert any(state == "Leaving" for exists, state in monitor.samples if exists)
