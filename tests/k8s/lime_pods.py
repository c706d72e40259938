"""LimeDB on the real one-node Kubernetes (realkube.py): the operator installed with the chart,
LimeClusters applied with kubectl, and a client pod of the same image that writes and reads the
20,000-key data set through the cluster's DNS names."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

from k8swait import wait_for
from realkube import KUBE_UP, LIMEDB_IMAGE, ROOT, RUN, RealKube

CHART = ROOT / "charts" / "limedb"
REPOSITORY, TAG = LIMEDB_IMAGE.rsplit(":", 1)
# The image is imported into the node by kube-up; no registry is reachable.
CHART_IMAGE = ("--set", f"image.repository={REPOSITORY}", "--set", f"image.tag={TAG}",
               "--set", "image.pullPolicy=Never")  # fmt: skip
OPERATOR_LABEL = "app.kubernetes.io/name=limedb-operator"
NODE_LABEL = "app.kubernetes.io/name=limedb"
INSTANCE_LABEL = "app.kubernetes.io/instance"
CONTAINERD = RUN / "containerd" / "containerd.sock"
KEYS = 20_000

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}

# Run by the client pod: `write` puts KEYS keys through the client Service, then every mode reads
# all of them back through each node's own headless-service name (that node coordinates).
# A pod's name can be missing from cluster DNS for a few seconds after the pod is Ready: the
# other pods looked it up while it was starting, and CoreDNS caches "no such name" for its
# negative TTL (5 s in realkube's Corefile, 30 s in a default cluster), which the resolver
# reports as "Temporary failure in name resolution". So the client waits for each name to
# resolve (at most a minute, saying how long it took) before it reads through it.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import socket, sys, time
    from limedb.client import Client

    mode, ns, cluster, nodes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    keys, batch = int(sys.argv[5]), 1000

    def value(i):
        return f"value-{i}"

    def resolved(host):
        started = time.monotonic()
        while True:
            try:
                socket.getaddrinfo(host, 8484, proto=socket.IPPROTO_TCP)
            except socket.gaierror:
                if time.monotonic() - started > 60:
                    raise
                time.sleep(0.5)
                continue
            waited = time.monotonic() - started
            if waited > 0.1:
                print(f"{host} resolved after {waited:.1f} s", flush=True)
            return

    if mode == "write":
        resolved(f"{cluster}.{ns}.svc")
        with Client(f"http://{cluster}.{ns}.svc:8484", timeout=30) as c:
            for start in range(0, keys, batch):
                c.batch(put={f"key-{i}": value(i) for i in range(start, start + batch)})
        print(f"wrote {keys} through http://{cluster}.{ns}.svc:8484", flush=True)
    bad = 0
    for o in range(nodes):
        host = f"{cluster}-{o}.{cluster}-headless.{ns}.svc"
        resolved(host)
        url = f"http://{host}:8484"
        missing = []
        with Client(url, timeout=30) as c:
            for start in range(0, keys, batch):
                names = [f"key-{i}" for i in range(start, start + batch)]
                got = c.batch(get=names)
                missing += [k for k in names if got.get(k) != value(int(k[4:])).encode()]
        print(f"{url} read {keys - len(missing)}/{keys} missing {missing[:5]}", flush=True)
        bad += len(missing)
    sys.exit(1 if bad else 0)
    """
)


def current_image(kube: RealKube) -> None:
    """Build the image from this tree if its inputs changed (scripts/image.sh, well under a
    second when nothing did), import it into the node if it is not the one there, and apply
    this tree's CRDs."""
    for cmd in (["bash", str(ROOT / "scripts" / "image.sh")],
                ["bash", str(KUBE_UP), "--import-only"]):  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"
    assert kube.image_present(LIMEDB_IMAGE), f"{LIMEDB_IMAGE} is not on the node"
    # The CRDs of this tree too: helm installs a chart's crds/ only when a CRD is missing, and
    # the API server prunes spec fields an older CRD does not know.
    crds = sorted((ROOT / "crds").glob("lime*.yaml"))
    kube.kubectl("apply", "--server-side", "--force-conflicts", *(f"--filename={c}" for c in crds))


def lime_manifest(name: str = "lime", nodes: int = 3, **spec: object) -> str:
    body = {
        "apiVersion": "limedb.io/v1alpha1",
        "kind": "LimeCluster",
        "metadata": {"name": name},
        "spec": {
            "nodes": nodes,
            "replicationFactor": 3,
            "vnodes": 16,
            "image": LIMEDB_IMAGE,
            "imagePullPolicy": "Never",
            "storage": {"size": "1Gi"},
            **spec,
        },
    }
    return json.dumps(body)


def delete_clusters(kube: RealKube, ns: str) -> None:
    """Test clean-up: delete every LimeCluster of `ns`; if its operator does not release one in
    time (a failed test may have left it broken), drop the finalizer so the namespace can go."""
    done = kube.kubectl("-n", ns, "delete", "lime", "--all", "--timeout=60s", check=False)
    if done.returncode != 0:
        logs = kube.kubectl("-n", ns, "logs", "-l", OPERATOR_LABEL, "--tail", "30", check=False)
        print(f"LimeClusters of {ns} not released in 60 s: {done.stderr}\n{logs.stdout}")
        for obj in kube.kubectl("-n", ns, "get", "lime", "-o", "name").stdout.split():
            kube.kubectl("-n", ns, "patch", obj, "--type=merge",
                         "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip


def install_operator(kube: RealKube, ns: str, release: str = "op", *sets: str) -> None:
    kube.helm("install", release, str(CHART), "-n", ns, *CHART_IMAGE, *sets, "--wait",
              "--timeout", "3m")  # fmt: skip


def lime_status(kube: RealKube, ns: str, name: str = "lime") -> dict:
    return kube.kubectl_json("-n", ns, "get", "lime", name).get("status") or {}


def get_lime_row(kube: RealKube, ns: str, name: str = "lime") -> dict[str, str]:
    """`kubectl get lime NAME` as the user reads it: the printer columns by header."""
    header, row = kube.kubectl("-n", ns, "get", "lime", name).stdout.splitlines()[:2]
    # Columns by their header's offsets: an empty cell (no PHASE or EPOCH yet) is blank there.
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def pods(kube: RealKube, ns: str, label: str = NODE_LABEL) -> list[dict]:
    return kube.kubectl_json("-n", ns, "get", "pods", "-l", label)["items"]


def converged(kube: RealKube, ns: str, nodes: int, name: str = "lime", timeout: float = 300,
              seen: list | None = None) -> dict:  # fmt: skip
    """Wait for `nodes` Ready pods that are Normal members, phase Running, Available and not
    Progressing; every `kubectl get lime` row on the way is appended to `seen`."""

    def done():
        row = get_lime_row(kube, ns, name)
        if seen is not None and (not seen or seen[-1] != row):
            seen.append(row)
        obj = kube.kubectl_json("-n", ns, "get", "lime", name)
        st = obj.get("status") or {}
        conditions = {c["type"]: c["status"] for c in st.get("conditions", [])}
        normal = [m for m in st.get("members", []) if m["state"] == "Normal"]
        live = [p for p in pods(kube, ns, f"{NODE_LABEL},{INSTANCE_LABEL}={name}")
                if not p["metadata"].get("deletionTimestamp")]  # fmt: skip
        ok = (
            len(live) == nodes
            and st.get("nodes") == nodes
            and st.get("readyNodes") == nodes
            and len(normal) == nodes
            and st.get("phase") == "Running"
            and conditions.get("Available") == "True"
            and conditions.get("Progressing") == "False"
        )
        return ok and obj

    def state():
        operator_log = kube.kubectl("-n", ns, "logs", "-l", OPERATOR_LABEL, "--tail", "20",
                                    check=False).stdout  # fmt: skip
        listed = kube.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout
        return (f"{nodes} converged nodes; status={lime_status(kube, ns, name)}\n{listed}\n"
                f"operator:\n{operator_log}")  # fmt: skip

    return wait_for(done, timeout=timeout, interval=1.0, what=state)


def script_pod(name: str, script: str, args: list[str]) -> str:
    """The manifest of a pod of the LimeDB image that runs a Python `script` with `args` once,
    under the restricted profile."""
    container = {
        "name": name.split("-")[0],
        "image": LIMEDB_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", script],
        "args": args,
        "securityContext": RESTRICTED_CONTAINER,
    }
    spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD,
        "containers": [container],
    }
    metadata = {"name": name, "labels": {"app": "lime-client"}}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})


def run_client(kube: RealKube, ns: str, mode: str, nodes: int, cluster: str = "lime",
               timeout: float = 300, keys: int = KEYS) -> str:  # fmt: skip
    """Run CLIENT_SCRIPT in a pod of the LimeDB image; its log, or AssertionError if it failed."""
    name = f"client-{mode}-{nodes}-{_counter()}"
    kube.apply(script_pod(name, CLIENT_SCRIPT, [mode, ns, cluster, str(nodes), str(keys)]), ns)

    def finished():
        phase = kube.kubectl_json("-n", ns, "get", "pod", name)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=timeout, interval=1.0, what=f"client pod {name} to finish")
    log = kube.kubectl("-n", ns, "logs", name).stdout
    assert phase == "Succeeded", f"client pod {name} {phase}:\n{log}"
    kube.kubectl("-n", ns, "delete", "pod", name, "--wait=false")
    return log


_count = [0]


def _counter() -> int:
    _count[0] += 1
    return _count[0]


def kill_container(container_id: str) -> None:
    """SIGKILL the container's process from the node (containerd), as an OOM kill would."""
    signal_container(container_id, "SIGKILL")


# Run by a load pod (issue 15): writes fresh keys one by one at quorum through the client Service
# and reads back an acknowledged one after each, until the key `load-stop` exists; then it reads
# every acknowledged key back and prints one JSON line: how many were acknowledged, the requests
# that failed after the client's retries, the reads that saw a wrong value, the keys lost.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, random, sys, time
    from limedb.client import Client, KeyNotFound, LimeDBError

    ns, cluster = sys.argv[1], sys.argv[2]
    acked, failed, wrong = [], [], []
    with Client(f"http://{cluster}.{ns}.svc:8484", timeout=5, retries=12, backoff=0.1) as c:
        print("load started", flush=True)
        i = 0
        while True:
            key = f"load-{i}"
            try:
                c.set(key, f"v{i}", consistency="quorum")
                acked.append(i)
            except LimeDBError as e:
                failed.append(f"put {key}: {e}"[:300])
            if acked:
                j = random.choice(acked)
                try:
                    if c.get(f"load-{j}", consistency="quorum") != f"v{j}".encode():
                        wrong.append(j)
                except LimeDBError as e:
                    failed.append(f"get load-{j}: {e}"[:300])
            i += 1
            if i % 500 == 0:
                print(f"acked {len(acked)} failed {len(failed)}", flush=True)
            if i % 25 == 0:
                try:
                    c.get("load-stop")
                    break
                except KeyNotFound:
                    pass
                except LimeDBError as e:
                    failed.append(f"get load-stop: {e}"[:300])
            time.sleep(0.01)
        lost = []
        for start in range(0, len(acked), 500):
            names = [f"load-{j}" for j in acked[start:start + 500]]
            got = c.batch(get=names)
            lost += [k for k in names if got.get(k) != f"v{k[5:]}".encode()]
    print(json.dumps({"acked": len(acked), "failed": failed, "wrong": wrong, "lost": lost}))
    """
)


def start_load(kube: RealKube, ns: str, cluster: str = "lime") -> str:
    """Start a load pod (LOAD_SCRIPT) and return its name once it runs."""
    name = f"load-{_counter()}"
    kube.apply(script_pod(name, LOAD_SCRIPT, [ns, cluster]), ns)
    wait_for(lambda: "load started" in kube.kubectl("-n", ns, "logs", name, check=False).stdout,
             timeout=120, interval=0.5, what=f"load pod {name} running")  # fmt: skip
    return name


def finish_load(kube: RealKube, ns: str, name: str, pod_ip: str) -> dict:
    """Stop the load pod (the key `load-stop`, written through the node at `pod_ip`) and return
    its summary."""
    from limedb.client import Client

    with Client(f"http://{pod_ip}:8484", timeout=10, retries=5) as c:
        c.set("load-stop", "1")

    def finished():
        phase = kube.kubectl_json("-n", ns, "get", "pod", name)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=180, interval=1.0, what=f"load pod {name} to finish")
    log = kube.kubectl("-n", ns, "logs", name).stdout
    assert phase == "Succeeded", f"load pod {name} {phase}:\n{log}"
    kube.kubectl("-n", ns, "delete", "pod", name, "--wait=false")
    return json.loads(log.strip().splitlines()[-1])


def tag_image(source: str, target: str) -> None:
    """Give the node's image `source` a second name `target` (the same build under another
    tag, as a registry would serve a re-tagged release)."""
    subprocess.run(
        ["ctr", "--address", str(CONTAINERD), "-n", "k8s.io", "images", "tag", "--force",
         source, target], check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def signal_container(container_id: str, signal: str) -> None:
    """Send `signal` (SIGSTOP, SIGCONT, ...) to the container's process from the node."""
    cid = container_id.split("://", 1)[-1]
    subprocess.run(
        ["ctr", "--address", str(CONTAINERD), "-n", "k8s.io", "tasks", "kill", "-s", signal,
         cid], check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
