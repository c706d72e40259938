"""A test-only stand-in for the kubelet (and the scheduler's binding step) on a real API server.

There is no container runtime here, so this runner is honest about what it replaces and
nothing else: it registers one Node, binds the pending pods of one namespace to it through
the real Binding API, and runs each pod's container as a local process with the pod's
command, arguments and environment (downward-API fields, secrets and `$(VAR)` references
resolved as a kubelet does). Each pod gets its own loopback address (127.0.64.x) as its pod
IP; a persistent volume claim is a directory that outlives the pod and is deleted with the
claim; an emptyDir lives with the pod. Readiness is the container's real HTTP readinessProbe.

What it translates, because a process has no namespaces of its own:
- paths: a value in the environment that lies under a volume's mountPath points into that
  volume's directory instead (there is no mount namespace);
- bind address: `0.0.0.0` in LIMEDB_HOST becomes the pod IP (there is no network namespace);
- cluster DNS: `<hostname>.<subdomain>.<namespace>.svc` of every running pod is written to
  /etc/hosts in a block owned by this runner and removed when it stops, so the headless-service
  names resolve to pod IPs like CoreDNS would answer them; a ClusterIP Service's name
  `<service>.<namespace>.svc` resolves to one Ready pod it selects (standing in for the
  ClusterIP and kube-proxy, which do not exist here);
- the image: its entrypoint is whatever the pod's command says; `limedb` is this checkout's.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import traceback
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)
HOSTS = Path("/etc/hosts")
VENV_BIN = Path(sys.executable).parent
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, others stay as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


@dataclass
class RunningPod:
    name: str
    uid: str
    ip: str
    proc: subprocess.Popen
    log_file: Any
    ready_probe: tuple[str, int] | None
    labels: dict[str, str] | None = None
    restarts: int = 0
    ready: bool = False
    last_status: dict = field(default_factory=dict)
    started_at: str = field(default_factory=_now)


class PodRunner:
    """Runs the pods of `namespace` until stop(); one instance per test namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, workdir: Path,
                 ip_prefix: str = "127.0.64.", runs=lambda pod: True) -> None:  # fmt: skip
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace = namespace
        self.workdir = workdir / f"runner-{namespace}"
        self.node = f"runner-{namespace}"
        self.ip_prefix = ip_prefix
        self.pods: dict[str, RunningPod] = {}
        self.runs = runs  # which pods this stand-in runs (others stay Pending, unbound)
        self._next_ip = 10
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"podrunner-{namespace}", daemon=True
        )
        self._hosts: dict[str, str] = {}
        self.errors: list[str] = []

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PodRunner:
        (self.workdir / "pvc").mkdir(parents=True, exist_ok=True)
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for name in list(self.pods):
            self._kill(name, grace=5)
        self._write_hosts({})
        try:
            self.core.delete_node(self.node)
        except ApiException:
            pass

    def _register_node(self) -> None:
        node = {
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "topology.kubernetes.io/zone": "zone-a",
                    "limedb.io/stand-in": "podrunner",
                },
            },
        }
        try:
            self.core.create_node(node)
        except ApiException as e:
            if e.status != 409:
                raise
        self.core.patch_node_status(
            self.node,
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "PodRunnerReady",
                            "message": "test pod runner (kubelet stand-in)",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                    "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                }
            },
        )

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as e:  # keep running; the test sees the symptom and the error
                self.errors.append(repr(e)[:500])
                with open(self.workdir / "runner-errors.log", "a") as f:
                    traceback.print_exc(file=f)
            self._stop.wait(0.3)

    def _sync(self) -> None:
        listed = self.core.list_namespaced_pod(self.namespace).items
        seen = set()
        for pod in listed:
            name = pod.metadata.name
            seen.add(name)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod)
                continue
            if not pod.spec.node_name:
                if self.runs(pod):
                    self._bind(pod)
                continue
            if pod.spec.node_name != self.node or pod.status.phase in ("Succeeded", "Failed"):
                continue
            running = self.pods.get(name)
            if running is not None and running.uid != pod.metadata.uid:
                self._kill(name, grace=1)  # a new pod of the same name replaced the old one
                running = None
            if running is None:
                running = self._start(pod)
            elif running.proc.poll() is not None:
                if pod.spec.restart_policy == "Never":
                    self._report(pod, running, exited=running.proc.returncode)
                    continue
                running = self._restart(pod, running)
            self._probe(running)
            self._report(pod, running)
        for name in list(self.pods):
            if name not in seen:
                self._kill(name, grace=5)
        self._collect_volumes()
        self._write_hosts({**self._hosts, **self._service_names()})

    def _bind(self, pod) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod.metadata.name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            self.core.create_namespaced_pod_binding(
                pod.metadata.name, self.namespace, body, _preload_content=False
            )
        except ApiException as e:
            if e.status != 409:
                raise

    # ---------------------------------------------------------------- processes

    def _volumes(self, pod) -> dict[str, Path]:
        """mountPath -> directory on this machine."""
        by_name: dict[str, Path] = {}
        for v in pod.spec.volumes or []:
            if v.persistent_volume_claim is not None:
                by_name[v.name] = self.workdir / "pvc" / v.persistent_volume_claim.claim_name
            elif v.empty_dir is not None:
                by_name[v.name] = self.workdir / "pods" / pod.metadata.uid / v.name
        mounts = {}
        for m in pod.spec.containers[0].volume_mounts or []:
            if m.name in by_name:
                by_name[m.name].mkdir(parents=True, exist_ok=True)
                mounts[m.mount_path] = by_name[m.name]
        return mounts

    def _env(self, pod, ip: str, mounts: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in pod.spec.containers[0].env or []:
            if e.value is not None:
                value = expand(e.value, env)
            elif e.value_from is not None and e.value_from.field_ref is not None:
                path = e.value_from.field_ref.field_path
                value = {
                    "metadata.name": pod.metadata.name,
                    "metadata.namespace": self.namespace,
                    "status.podIP": ip,
                    "spec.nodeName": self.node,
                }[path]
            elif e.value_from is not None and e.value_from.secret_key_ref is not None:
                ref = e.value_from.secret_key_ref
                secret = self.core.read_namespaced_secret(ref.name, self.namespace)
                value = base64.b64decode(secret.data[ref.key]).decode()
            else:
                value = ""
            env[e.name] = value
        for key, value in env.items():
            for mount, directory in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    env[key] = str(directory) + value[len(mount) :]
        if env.get("LIMEDB_HOST") == "0.0.0.0":
            env["LIMEDB_HOST"] = ip
        return env

    def _start(self, pod, restarts: int = 0, ip: str | None = None) -> RunningPod:
        name = pod.metadata.name
        if ip is None:
            ip = f"{self.ip_prefix}{self._next_ip}"
            self._next_ip += 1
        container = pod.spec.containers[0]
        mounts = self._volumes(pod)
        env = self._env(pod, ip, mounts)
        argv = [expand(a, env) for a in (container.command or []) + (container.args or [])]
        workdir = self.workdir / "pods" / pod.metadata.uid
        workdir.mkdir(parents=True, exist_ok=True)
        full_env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(mounts.get("/tmp", workdir)),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        log_file = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (closed on kill)
        log_file.write(f"--- start {name} ip={ip} argv={argv[:2]} ---\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            argv, env=full_env, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        probe = None
        rp = container.readiness_probe
        if rp is not None and rp.http_get is not None:
            port = rp.http_get.port
            if isinstance(port, str) and not port.isdigit():
                port = next(p.container_port for p in container.ports if p.name == port)
            probe = (rp.http_get.path, int(port))
        running = RunningPod(
            name, pod.metadata.uid, ip, proc, log_file, probe, dict(pod.metadata.labels or {}),
            restarts,
        )  # fmt: skip
        self.pods[name] = running
        if pod.spec.hostname and pod.spec.subdomain:
            self._hosts[name] = (
                f"{ip} {pod.spec.hostname}.{pod.spec.subdomain}.{self.namespace}.svc"
            )
        return running

    def _restart(self, pod, running: RunningPod) -> RunningPod:
        running.log_file.close()
        return self._start(pod, running.restarts + 1, running.ip)

    def _probe(self, running: RunningPod) -> None:
        if running.proc.poll() is not None:
            running.ready = False
            return
        if running.ready_probe is None:
            running.ready = True
            return
        path, port = running.ready_probe
        try:
            with urllib.request.urlopen(f"http://{running.ip}:{port}{path}", timeout=1) as r:
                running.ready = r.status == 200
        except Exception:
            running.ready = False

    def _report(self, pod, running: RunningPod, exited: int | None = None) -> None:
        ready = "True" if running.ready and exited is None else "False"
        phase = "Running" if exited is None else ("Succeeded" if exited == 0 else "Failed")
        state = (
            {"running": {"startedAt": running.started_at}}
            if exited is None
            else {
                "terminated": {
                    "exitCode": exited,
                    "reason": "Completed" if exited == 0 else "Error",
                }
            }
        )
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": running.ip,
            "podIPs": [{"ip": running.ip}],
            "startTime": running.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": [
                {
                    "name": pod.spec.containers[0].name,
                    "image": pod.spec.containers[0].image,
                    "imageID": "",
                    "ready": ready == "True",
                    "started": exited is None,
                    "restartCount": running.restarts,
                    "state": state,
                }
            ],
        }
        if status == running.last_status:
            return
        now = _now()
        patch = {"status": {**status, "conditions": [
            {**c, "lastTransitionTime": now} for c in status["conditions"]
        ]}}  # fmt: skip
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, patch)
        running.last_status = status

    def _terminate(self, pod) -> None:
        """Graceful deletion as a kubelet does it: stop the container, then remove the pod."""
        grace = pod.metadata.deletion_grace_period_seconds or 30
        self._kill(pod.metadata.name, grace=min(grace, 20))
        try:
            # Options go in the body: with a body, the API server ignores the query ones.
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                self.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}},
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _kill(self, name: str, grace: float) -> None:
        running = self.pods.pop(name, None)
        self._hosts.pop(name, None)
        if running is None:
            return
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGTERM)
            try:
                running.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(running.proc.pid, signal.SIGKILL)
                running.proc.wait()
        running.log_file.close()

    def kill_pod_process(self, name: str) -> None:
        """SIGKILL a pod's process (a crash); the runner restarts it like restartPolicy Always."""
        running = self.pods[name]
        os.killpg(running.proc.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- volumes and DNS

    def _collect_volumes(self) -> None:
        claims = {
            c.metadata.name
            for c in self.core.list_namespaced_persistent_volume_claim(self.namespace).items
        }
        for directory in (self.workdir / "pvc").iterdir():
            if directory.name not in claims:
                shutil.rmtree(directory, ignore_errors=True)

    def _service_names(self) -> dict[str, str]:
        out = {}
        for svc in self.core.list_namespaced_service(self.namespace).items:
            selector = svc.spec.selector or {}
            if svc.spec.cluster_ip in (None, "None") or not selector:
                continue
            ready = sorted(
                (r.name, r.ip)
                for r in self.pods.values()
                if r.ready and selector.items() <= (r.labels or {}).items()
            )
            if ready:
                name = svc.metadata.name
                out[f"svc:{name}"] = f"{ready[0][1]} {name}.{self.namespace}.svc"
        return out

    def volume_dirs(self) -> list[str]:
        return sorted(d.name for d in (self.workdir / "pvc").iterdir())

    def _write_hosts(self, entries: dict[str, str]) -> None:
        # The owner's pid is in the marker so that blocks left by a killed test run can be
        # told apart from those of a concurrent, live one and swept.
        begin = f"# podrunner {self.namespace} pid={os.getpid()} begin"
        end = f"# podrunner {self.namespace} end"
        with open(HOSTS, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            lines = f.read().splitlines()
            kept, skipping = [], False
            for line in lines:
                if line.startswith("# podrunner ") and line.endswith(" begin"):
                    owner = line.split("pid=", 1)[-1].split()[0] if "pid=" in line else ""
                    skipping = line == begin or not _alive(owner)
                    if not skipping:
                        kept.append(line)
                elif line.startswith("# podrunner ") and line.endswith(" end"):
                    if not skipping:
                        kept.append(line)
                    skipping = False
                elif not skipping:
                    kept.append(line)
            if entries:
                kept += [begin, *sorted(entries.values()), end]
            text = "\n".join(kept) + "\n"
            if text != "\n".join(lines) + "\n":
                # In place: /etc/hosts may be a bind mount that cannot be replaced by rename.
                f.seek(0)
                f.write(text)
                f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
