"""Issue 13, acceptance 1-4, on real pods of the real image (`make image`, imported by kube-up):
the chart's operator Deployment and a 3-node LimeCluster in a namespace enforcing the
`restricted` Pod Security Standard; 20,000 keys written by a client pod through the client
Service and read back through every pod's headless-service name; 3 -> 5 -> 3 with the operator
pod deleted in the middle of the scale-down; a node container killed, a node pod deleted; the
LimeCluster deleted and re-created over its retained volumes.

One namespace, operator and LimeCluster serve the whole module, in order: each test starts
from the converged 3-node cluster the previous one left, and the data set written once must be
whole after every step.
"""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import threading
from collections.abc import Iterator

import pytest
import redis
from k8swait import wait_for
from lime_pods import (
    KEYS,
    NODE_LABEL,
    OPERATOR_LABEL,
    converged,
    current_image,
    delete_clusters,
    finish_load,
    get_lime_row,
    install_operator,
    kill_container,
    lime_manifest,
    lime_status,
    pods,
    run_client,
    signal_container,
    start_load,
    tag_image,
)
from realkube import BIN, LIMEDB_IMAGE, RESTRICTED, RealKube

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def ns(kube: RealKube) -> Iterator[str]:
    current_image(kube)
    name = kube.namespace("lime")
    install_operator(kube, name)
    yield name
    # The LimeCluster first, while its operator can still release it; then everything else.
    delete_clusters(kube, name)
    kube.delete_namespace(name, wait=False)


@pytest.fixture(scope="module")
def cluster(kube: RealKube, ns: str) -> str:
    kube.apply(lime_manifest(), ns)
    converged(kube, ns, 3)
    return "lime"


def _claims(kube: RealKube, ns: str) -> dict[str, dict]:
    listed = kube.kubectl_json("-n", ns, "get", "pvc")["items"]
    return {c["metadata"]["name"]: c for c in listed if not c["metadata"].get("deletionTimestamp")}


def test_pods_run_the_image_as_non_root_on_a_read_only_root_under_restricted(
    kube: RealKube, ns: str, cluster: str
):
    labels = kube.kubectl_json("get", "namespace", ns)["metadata"]["labels"]
    assert labels[RESTRICTED] == "restricted"
    running = pods(kube, ns, OPERATOR_LABEL) + pods(kube, ns, NODE_LABEL)
    assert len(running) == 4
    for pod in running:
        name = pod["metadata"]["name"]
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["image"].endswith(LIMEDB_IMAGE), (name, status)
        assert kube.kubectl("-n", ns, "exec", name, "--", "id", "-u").stdout.strip() == "10001"
        root = kube.kubectl("-n", ns, "exec", name, "--", "touch", "/probe", check=False)
        assert root.returncode != 0 and "Read-only file system" in root.stderr, (name, root)
    # The node writes its data to the volume (fsGroup makes it the pod's).
    listing = kube.kubectl("-n", ns, "exec", "lime-0", "--", "ls", "/data").stdout
    assert listing.strip(), "the node wrote nothing to /data"


def test_a_client_pod_writes_20000_keys_through_the_service_and_reads_them_per_pod(
    kube: RealKube, ns: str, cluster: str
):
    log = run_client(kube, ns, "write", nodes=3)
    assert f"wrote 20000 through http://lime.{ns}.svc:8484" in log
    for o in range(3):
        assert f"lime-{o}.lime-headless.{ns}.svc:8484 read 20000/20000" in log, log


def test_resp_needs_the_password_the_operator_generated(kube: RealKube, ns: str, cluster: str):
    secret = kube.kubectl_json("-n", ns, "get", "secret", "lime-resp-password")
    password = base64.b64decode(secret["data"]["password"]).decode()
    cluster_secret = kube.kubectl_json("-n", ns, "get", "secret", "lime-secret")
    assert password and password != base64.b64decode(cluster_secret["data"]["cluster-secret"])
    # The node's bridge reaches pod IPs directly.
    ip = kube.kubectl_json("-n", ns, "get", "pod", "lime-1")["status"]["podIP"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=ip, port=6379, socket_timeout=10).get("resp-key")
    authed = redis.Redis(host=ip, port=6379, password=password, socket_timeout=10)
    assert authed.set("resp-key", "via-resp") and authed.get("resp-key") == b"via-resp"
    authed.close()


def verified(kube: RealKube, ns: str, epoch: int) -> dict:
    """status.lastVerification once it reports `epoch` (issue 15, acceptance 5)."""

    def published() -> dict | None:
        last = kube.kubectl_json("-n", ns, "get", "lime", "lime")["status"].get("lastVerification")
        return last if last and last["epoch"] == epoch else None

    return wait_for(published, timeout=60, interval=1.0, what=f"lastVerification of epoch {epoch}")


def test_scale_to_5_and_back_to_3_with_the_operator_pod_deleted_mid_scale_down(
    kube: RealKube, ns: str, cluster: str
):
    rows: list[dict[str, str]] = []
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=5")
    obj = converged(kube, ns, 5, seen=rows)
    _assert_row_shows(get_lime_row(kube, ns), obj["status"], nodes="5")
    assert {"ScalingUp", "Rebalancing"} & {r["PHASE"] for r in rows}, rows
    assert obj["status"]["ringEpoch"] >= 3  # one epoch per join at least
    assert {"ScalingUp", "Joining"} <= _event_reasons(kube, ns)
    # The last join was verified across the new replicas of every range it moved.
    last = verified(kube, ns, obj["status"]["ringEpoch"])
    assert (last["result"], last["keysRepaired"]) == ("ok", 0), last
    assert last["rangesChecked"] > 0
    run_client(kube, ns, "read", nodes=5)

    (old_operator,) = pods(kube, ns, OPERATOR_LABEL)
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=3")
    rows.clear()

    def scaling_down():
        row = get_lime_row(kube, ns)
        if not rows or rows[-1] != row:
            rows.append(row)
        return row["PHASE"] in ("ScalingDown", "Rebalancing")

    # A leave takes seconds here: the operator goes at the first sign of the scale-down.
    wait_for(scaling_down, timeout=120, interval=0.2, what=lambda: f"ScalingDown; rows {rows}")
    kube.kubectl("-n", ns, "delete", "pod", old_operator["metadata"]["name"], "--wait=false")
    sts = kube.kubectl_json("-n", ns, "get", "statefulset", "lime")
    assert sts["spec"]["replicas"] > 3, "the scale-down finished before the operator was deleted"

    def replaced():
        new = [p for p in pods(kube, ns, OPERATOR_LABEL)
               if p["metadata"]["uid"] != old_operator["metadata"]["uid"]]  # fmt: skip
        return new and all(c["ready"] for c in new[0]["status"].get("containerStatuses", [{}]))

    wait_for(replaced, timeout=120, interval=1.0, what="a new operator pod, Ready")
    obj = converged(kube, ns, 3, seen=rows)
    _assert_row_shows(get_lime_row(kube, ns), obj["status"], nodes="3")
    assert obj["status"].get("migration") is None  # no stale progress once it is over
    normal = [m["pod"] for m in obj["status"]["members"] if m["state"] == "Normal"]
    assert normal == ["lime-0", "lime-1", "lime-2"]
    assert {"Leaving", "ScalingDown"} <= _event_reasons(kube, ns)
    last = verified(kube, ns, obj["status"]["ringEpoch"])
    assert (last["result"], last["keysRepaired"]) == ("ok", 0), last
    assert "Verified" in _event_reasons(kube, ns)
    run_client(kube, ns, "read", nodes=3)
    # whenScaled=Delete (the default): the volumes of the removed nodes go.
    wait_for(lambda: sorted(_claims(kube, ns)) == ["data-lime-0", "data-lime-1", "data-lime-2"],
             timeout=60, what=lambda: f"only the members' claims; have {sorted(_claims(kube, ns))}")  # fmt: skip


def test_scale_below_the_replication_factor_is_refused_and_removes_nothing(
    kube: RealKube, ns: str, cluster: str
):
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=2")

    def refused():
        st = lime_status(kube, ns)
        valid = next((c for c in st.get("conditions", []) if c["type"] == "Valid"), {})
        return valid.get("status") == "False" and (st, valid)

    st, valid = wait_for(refused, timeout=60, interval=0.5, what="Valid=False")
    assert valid["reason"] == "BelowReplicationFactor" and st["phase"] == "Invalid"
    assert get_lime_row(kube, ns)["PHASE"] == "Invalid"
    assert "BelowReplicationFactor" in _event_reasons(kube, ns)
    sts = kube.kubectl_json("-n", ns, "get", "statefulset", "lime")
    assert sts["spec"]["replicas"] == 3
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=3")
    converged(kube, ns, 3)


def _event_reasons(kube: RealKube, ns: str) -> set[str]:
    listed = kube.kubectl_json("-n", ns, "get", "events",
                               "--field-selector", "involvedObject.kind=LimeCluster")  # fmt: skip
    return {e["reason"] for e in listed["items"]}


def _assert_row_shows(row: dict[str, str], status: dict, nodes: str) -> None:
    assert row["NODES"] == nodes and row["READY"] == nodes, row
    assert row["PHASE"] == "Running", row
    assert row["EPOCH"] == str(status["ringEpoch"]), (row, status.get("ringEpoch"))


def test_a_killed_node_container_is_restarted_by_the_kubelet_with_its_data(
    kube: RealKube, ns: str, cluster: str
):
    pod = kube.kubectl_json("-n", ns, "get", "pod", "lime-1")
    (status,) = pod["status"]["containerStatuses"]
    kill_container(status["containerID"])

    def restarted():
        got = kube.kubectl_json("-n", ns, "get", "pod", "lime-1")
        (now,) = got["status"]["containerStatuses"]
        return now["restartCount"] > status["restartCount"] and now["ready"] and got

    got = wait_for(restarted, timeout=180, interval=1.0, what="lime-1 restarted and Ready")
    assert got["metadata"]["uid"] == pod["metadata"]["uid"]  # the same pod: only the container
    converged(kube, ns, 3)
    run_client(kube, ns, "read", nodes=3)


def test_a_deleted_node_pod_comes_back_with_the_same_volume_and_its_data(
    kube: RealKube, ns: str, cluster: str
):
    before = kube.kubectl_json("-n", ns, "get", "pod", "lime-2")
    claim = _claims(kube, ns)["data-lime-2"]
    kube.kubectl("-n", ns, "delete", "pod", "lime-2", "--wait=false")

    def back():
        got = kube.kubectl_json("-n", ns, "get", "pod", "lime-2")
        fresh = got["metadata"]["uid"] != before["metadata"]["uid"]
        ready = all(c["ready"] for c in got["status"].get("containerStatuses", [{"ready": 0}]))
        return fresh and ready and got

    wait_for(back, timeout=180, interval=1.0, what="a new lime-2 pod, Ready")
    again = _claims(kube, ns)["data-lime-2"]
    assert again["metadata"]["uid"] == claim["metadata"]["uid"]
    assert again["spec"]["volumeName"] == claim["spec"]["volumeName"]
    converged(kube, ns, 3)
    run_client(kube, ns, "read", nodes=3)


# Run in lime-0 while lime-1 loses its volume: quorum writes and read-backs through the two
# survivors until lime-0 reports the replace of lime-1 done; prints what the client saw.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from limedb.client import Client

    ns, limit = sys.argv[1], float(sys.argv[2])
    urls = [f"http://lime-{o}.lime-headless.{ns}.svc:8484" for o in (0, 2)]
    clients = [Client(u, timeout=10, retries=0) for u in urls]
    # As user admin where the operator made one (auth enabled), else with the cluster secret.
    password = os.environ.get("LIMEDB_BOOTSTRAP_ADMIN_PASSWORD")
    way = dict(user="admin", password=password) if password else dict(
        cluster_secret=os.environ.get("LIMEDB_CLUSTER_SECRET"))
    admin = Client(urls[0], timeout=10, **way)
    ok, errors, last, i = 0, [], {}, 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        client, key, value = clients[i % 2], f"load-{i % 100}", f"v{i}".encode()
        try:
            client.set(key, value)
            got = client.get(key)
            if got == value:
                ok += 1
            else:
                errors.append(f"{key}: wrote {value!r}, read {got!r}")
        except Exception as exc:
            errors.append(repr(exc)[:300])
        i += 1
        if i % 20 == 0:
            last = admin.admin_status().get("last_transition") or {}
            if last.get("kind") == "replace" and last.get("phase") in ("done", "rolled_back"):
                break
    print(json.dumps({"ok": ok, "errors": errors, "last": last}), flush=True)
    """
)

# Run in the replaced pod: every key of the data set read from this node alone.
READ_ALONE_SCRIPT = textwrap.dedent(
    """
    import sys
    from limedb.client import Client

    keys, missing = int(sys.argv[1]), []
    with Client("http://127.0.0.1:8484", timeout=30) as c:
        for i in range(keys):
            try:
                got = c.get(f"key-{i}", consistency="one")
            except Exception as exc:
                got = repr(exc)
            if got != f"value-{i}".encode():
                missing.append(f"key-{i}")
    print(f"read alone {keys - len(missing)}/{keys} missing {missing[:5]}", flush=True)
    """
)


def test_a_node_whose_volume_is_deleted_is_replaced_automatically(
    kube: RealKube, ns: str, cluster: str
):
    """Issue 15, acceptance 4: lime-1's claim and pod deleted; it comes back on a new, empty
    volume, is replaced from the survivors, and then holds every key itself."""
    claim = _claims(kube, ns)["data-lime-1"]
    load = subprocess.Popen(
        [str(BIN / "kubectl"), "-n", ns, "exec", "lime-0", "--", "python", "-c", LOAD_SCRIPT,
         ns, "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kube.env(),
    )  # fmt: skip
    try:
        kube.kubectl("-n", ns, "delete", "pvc", "data-lime-1", "--wait=false")
        kube.kubectl("-n", ns, "delete", "pod", "lime-1", "--wait=false")

        def back_on_a_new_volume():
            again = _claims(kube, ns).get("data-lime-1")
            got = kube.kubectl("-n", ns, "get", "pod", "lime-1", "-o", "json", check=False)
            if got.returncode != 0:
                return False  # deleted, not re-created by the StatefulSet controller yet
            pod = json.loads(got.stdout)
            if again is None and pod["status"].get("phase") == "Pending":
                # Created while the old claim was still going: it waits for a claim the
                # StatefulSet controller makes only for a new pod.
                kube.kubectl("-n", ns, "delete", "pod", "lime-1", "--wait=false")
                return False
            ready = all(c["ready"] for c in pod["status"].get("containerStatuses", [{"ready": 0}]))
            return (
                again is not None and again["metadata"]["uid"] != claim["metadata"]["uid"] and ready
            )

        wait_for(back_on_a_new_volume, timeout=240, interval=2.0,
                 what="lime-1 Ready on a new claim")  # fmt: skip
        out, err = load.communicate(timeout=330)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, f"load client failed: {err[-2000:]}"
    seen = json.loads(out.strip().splitlines()[-1])
    last = seen["last"]
    assert last.get("kind") == "replace" and last["phase"] == "done", seen
    assert last["node"].startswith("http://lime-1."), last
    assert seen["ok"] > 0 and seen["errors"] == [], seen
    assert last["keys_streamed"] >= KEYS, last  # RF 3 of 3 nodes: lime-1 holds every key
    converged(kube, ns, 3)
    alone = kube.kubectl("-n", ns, "exec", "lime-1", "--", "python", "-c", READ_ALONE_SCRIPT,
                         str(KEYS), timeout=300).stdout  # fmt: skip
    assert f"read alone {KEYS}/{KEYS}" in alone, alone
    run_client(kube, ns, "read", nodes=3)


def test_deleting_the_cluster_leaves_only_retained_volumes_and_a_new_one_has_the_data(
    kube: RealKube, ns: str, cluster: str
):
    claims = {n: c["metadata"]["uid"] for n, c in _claims(kube, ns).items()}
    kube.kubectl("-n", ns, "delete", "lime", "lime", "--wait=false")
    # pvcRetention.whenDeleted defaults to Retain: the claims stay, everything else goes.
    wait_for(lambda: _left_of(kube, ns) == [], timeout=60,
             what=lambda: f"nothing of the cluster but its claims; left {_left_of(kube, ns)}")  # fmt: skip
    assert {n: c["metadata"]["uid"] for n, c in _claims(kube, ns).items()} == claims
    kube.apply(lime_manifest(), ns)
    converged(kube, ns, 3)
    run_client(kube, ns, "read", nodes=3)


def _left_of(kube: RealKube, ns: str) -> list[str]:
    """What of LimeCluster `lime` still exists, claims aside."""
    out = kube.kubectl("-n", ns, "get", "limecluster,statefulset,pod,service,secret,pdb",
                       "-l", "app.kubernetes.io/instance=lime", "-o", "name").stdout.split()  # fmt: skip
    out += kube.kubectl("-n", ns, "get", "limecluster", "-o", "name").stdout.split()
    return sorted(set(out))


class PodWatch:
    """Samples the node pods every half second in a thread: every uid each pod name had, in
    order, and the most pods down (not Ready, terminating or missing) at any one sample."""

    def __init__(self, kube: RealKube, ns: str, nodes: int = 3) -> None:
        self.kube, self.ns, self.nodes = kube, ns, nodes
        self.uids: dict[str, list[str]] = {}
        self.restarts: list[str] = []  # pod names, in the order their new pods appeared
        self.max_down, self.worst = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _sample(self) -> None:
        up = []
        for pod in pods(self.kube, self.ns):
            name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            seen = self.uids.setdefault(name, [])
            if not seen or seen[-1] != uid:
                if seen:
                    self.restarts.append(name)
                seen.append(uid)
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod["status"].get("conditions", []))  # fmt: skip
            if ready and not pod["metadata"].get("deletionTimestamp"):
                up.append(name)
        down = self.nodes - len(up)
        if down > self.max_down:
            self.max_down, self.worst = down, f"only {sorted(up)} up"

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._sample()
            except Exception as e:  # a kubectl hiccup is one lost sample, not a verdict
                print(f"pod watch sample failed: {e}")


def _revisions(kube: RealKube, ns: str) -> tuple[str, dict[str, str]]:
    sts = kube.kubectl_json("-n", ns, "get", "statefulset", "lime")
    revs = {p["metadata"]["name"]: p["metadata"]["labels"].get("controller-revision-hash", "")
            for p in pods(kube, ns) if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
    return sts["status"].get("updateRevision", ""), revs


def _upgrading(kube: RealKube, ns: str) -> dict:
    st = lime_status(kube, ns)
    return next((c for c in st.get("conditions", []) if c["type"] == "Upgrading"), {})


def test_a_setting_change_rolls_one_pod_at_a_time_under_load_waiting_for_a_down_node(
    kube: RealKube, ns: str, cluster: str
):
    """Issue 15, acceptance 1-3: quorum reads and writes run throughout; lime-1 is stopped
    (SIGSTOP) before a setting change, and no pod restarts while it is down; once it is back
    the pods restart highest ordinal first, one at a time, with the operator pod deleted after
    the first restart, and no pod restarts twice. Then the image tag of the same build
    changes, and the pods roll again the same way."""
    converged(kube, ns, 3)
    load = start_load(kube, ns)
    with PodWatch(kube, ns) as watch:
        pod1 = kube.kubectl_json("-n", ns, "get", "pod", "lime-1")
        (status,) = pod1["status"]["containerStatuses"]
        signal_container(status["containerID"], "SIGSTOP")
        try:
            wait_for(lambda: not kube.kubectl_json("-n", ns, "get", "pod", "lime-1")["status"][
                "containerStatuses"][0]["ready"], timeout=60, interval=0.5,
                what="lime-1 not Ready")  # fmt: skip
            kube.kubectl("-n", ns, "patch", "lime", "lime", "--type=merge", "-p",
                         '{"spec": {"env": [{"name": "LIMEDB_LOG_LEVEL", "value": "warning"}]}}')  # fmt: skip
            held = wait_for(lambda: (c := _upgrading(kube, ns)).get("reason") == "PodsNotReady"
                            and c, timeout=60, interval=0.5,
                            what=lambda: f"Upgrading/PodsNotReady; have {_upgrading(kube, ns)}")  # fmt: skip
            assert held["status"] == "True" and "lime-1" in held["message"], held
            update, revs = _revisions(kube, ns)
            assert update and all(r != update for r in revs.values()), (update, revs)
            assert all(len(u) == 1 for u in watch.uids.values()), watch.uids
            assert lime_status(kube, ns)["phase"] == "Upgrading"
        finally:
            signal_container(status["containerID"], "SIGCONT")

        def restarted(name):
            return lambda: len(watch.uids.get(name, [])) > 1

        wait_for(restarted("lime-2"), timeout=180, interval=0.5, what="lime-2 restarted")
        (old_operator,) = pods(kube, ns, OPERATOR_LABEL)
        kube.kubectl("-n", ns, "delete", "pod", old_operator["metadata"]["name"], "--wait=false")
        wait_for(lambda: _upgrading(kube, ns).get("reason") == "UpToDate", timeout=300,
                 interval=1.0, what=lambda: f"the roll to finish; {lime_status(kube, ns)}")  # fmt: skip
        converged(kube, ns, 3)
        update, revs = _revisions(kube, ns)
        assert revs == {f"lime-{o}": update for o in range(3)}, (update, revs)
        # Each pod restarted exactly once (the operator's restart did not repeat one).
        assert {n: len(u) for n, u in watch.uids.items()} == {f"lime-{o}": 2 for o in range(3)}

        # Separately, the image: the same build under another tag rolls the same way.
        retagged = LIMEDB_IMAGE + "-retagged"
        tag_image(LIMEDB_IMAGE, retagged)
        kube.kubectl("-n", ns, "patch", "lime", "lime", "--type=merge", "-p",
                     json.dumps({"spec": {"image": retagged}}))  # fmt: skip
        wait_for(lambda: all(len(watch.uids.get(f"lime-{o}", [])) == 3 for o in range(3))
                 and _upgrading(kube, ns).get("reason") == "UpToDate", timeout=300, interval=1.0,
                 what=lambda: f"the image roll to finish; {lime_status(kube, ns)}")  # fmt: skip
        converged(kube, ns, 3)
    for o in range(3):
        spec = kube.kubectl_json("-n", ns, "get", "pod", f"lime-{o}")["spec"]
        assert spec["containers"][0]["image"] == retagged, spec["containers"][0]
    # Each pod restarted exactly once per roll, never two down at once (lime-1 stopped
    # counts), highest ordinal first.
    assert {n: len(u) for n, u in watch.uids.items()} == {f"lime-{o}": 3 for o in range(3)}
    assert watch.max_down == 1, watch.worst
    reasons = _event_reasons(kube, ns)
    assert {"Restarting", "UpgradePodsNotReady", "Upgraded"} <= reasons, reasons
    assert watch.restarts == ["lime-2", "lime-1", "lime-0"] * 2, watch.restarts
    ip = kube.kubectl_json("-n", ns, "get", "pod", "lime-0")["status"]["podIP"]
    summary = finish_load(kube, ns, load, ip)
    print(f"load: {summary['acked']} acknowledged writes")
    assert summary["acked"] > 50, summary
    assert (summary["failed"], summary["wrong"], summary["lost"]) == ([], [], []), summary
    run_client(kube, ns, "read", nodes=3)


def test_replication_factor_lowered_to_1_with_one_node_then_back_to_3_nodes(
    kube: RealKube, ns: str, cluster: str
):
    """The RF change runs first (through the admin API, no pod restarted), then two leaves; the
    data set stays whole on the one node left, and on the three after the scale-up."""
    kube.kubectl("-n", ns, "patch", "lime", "lime", "--type=merge",
                 "-p", '{"spec": {"replicationFactor": 1, "nodes": 1}}')  # fmt: skip
    obj = converged(kube, ns, 1)
    valid = next(c for c in obj["status"]["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "True"
    assert "ReplicationFactor" in _event_reasons(kube, ns)
    run_client(kube, ns, "read", nodes=1)
    kube.kubectl("-n", ns, "scale", "lime/lime", "--replicas=3")
    converged(kube, ns, 3)
    run_client(kube, ns, "read", nodes=3)
