"""`limedb cluster up` runs a real local cluster in the foreground; `limedb status` reports it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.cluster import wait_for

pytestmark = pytest.mark.cluster

LIMEDB = str(Path(sys.executable).with_name("limedb"))
HOST = "127.0.0.60"


def _free_base_port(nodes: int, offsets: tuple[int, ...] = (0, 1000)) -> int:
    """A base port whose next `nodes` ports are free at each of `offsets` (by default the
    HTTP ports and their internal ports, +1000)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            base = probe.getsockname()[1]
        ports = [base + offset + i for offset in offsets for i in range(nodes)]
        if max(ports) > 65535:
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind((HOST, port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def _refuses(url: str) -> bool:
    try:
        httpx.get(f"{url}/livez", timeout=1.0)
    except httpx.ConnectError:
        return True
    return False


def test_cluster_up_serves_status_and_ctrl_c_stops_every_node(tmp_path: Path) -> None:
    # HTTP at base + i, internal at base + 1000 + i, RESP at base + 2000 + i.
    base = _free_base_port(3, (0, 1000, 2000))
    resp_base = base + 2000
    urls = [f"http://{HOST}:{base + i}" for i in range(3)]
    # No secret in the environment: `cluster up` generates one (as `make run` does).
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("LIMEDB_")}
    up = subprocess.Popen(
        [LIMEDB, "cluster", "up", "--nodes", "3", "--base-port", str(base), "--host", HOST,
         "--resp-base-port", str(resp_base), "--data-dir", str(tmp_path / "data")],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so teardown can reach the nodes even if the test fails
    )  # fmt: skip
    try:
        with httpx.Client(timeout=2.0) as client:

            def all_see_each_other() -> bool:
                return all(
                    client.get(f"{url}/api/v1/cluster/gossip").json().get("active_peers") == 2
                    for url in urls
                )

            wait_for(all_see_each_other, 40, "three nodes that see each other")
            assert client.put(f"{urls[0]}/v1/kv/hello", content=b"world").status_code < 300
            assert client.get(f"{urls[2]}/v1/kv/hello").content == b"world"

        # Each node has its own RESP port, and any of them serves any key.
        for i in range(3):
            cli = ["redis-cli", "-h", HOST, "-p", str(resp_base + i)]
            written = subprocess.run([*cli, "set", f"r{i}", f"v{i}"], capture_output=True,
                                     text=True, timeout=30)  # fmt: skip
            assert written.stdout.strip() == "OK", written.stdout + written.stderr
        read = subprocess.run(["redis-cli", "-h", HOST, "-p", str(resp_base), "get", "r2"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert read.stdout.strip() == "v2"

        status = subprocess.run(
            [LIMEDB, "status", "--url", urls[1]],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert status.returncode == 0, status.stdout + status.stderr
        for url in urls:
            assert url in status.stdout
        assert "ring epoch 1" in status.stdout
        assert status.stdout.count("active") >= 3
        assert "33." in status.stdout or "%" in status.stdout  # token share per node

        # The admin routes want the generated secret; `limedb admin`, run where `cluster up`
        # ran, finds it in data/cluster-secret.
        assert httpx.get(f"{urls[0]}/admin/status").status_code == 401
        admin = subprocess.run(
            [LIMEDB, "admin", "status", "--json", "--url", urls[2]],
            cwd=tmp_path,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert admin.returncode == 0, admin.stdout + admin.stderr
        assert sorted(m["url"] for m in json.loads(admin.stdout)["members"]) == sorted(urls)
        secret = (tmp_path / "data" / "cluster-secret").read_text().strip()
        headers = {"x-cluster-secret": secret}
        assert httpx.get(f"{urls[1]}/admin/status", headers=headers).status_code == 200

        up.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = up.communicate(timeout=30)
        assert up.returncode == 0, output
        for i, url in enumerate(urls):
            assert url in output  # the URLs were printed, with their RESP and internal ports
            assert f"RESP {HOST}:{resp_base + i}" in output
            assert f"internal port {base + 1000 + i}" in output
            assert _refuses(url)
        assert f"Dashboard: {urls[0]}/ui" in output
        assert "stopped" in output
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        else:
            try:
                os.killpg(up.pid, signal.SIGKILL)  # any node left behind
            except ProcessLookupError:
                pass


def test_cluster_up_names_a_busy_internal_port_before_starting(tmp_path: Path) -> None:
    base = _free_base_port(2)
    with socket.socket() as squatter:  # something else holds node 1's internal port
        squatter.bind((HOST, base + 1001))
        squatter.listen()
        done = subprocess.run(
            [LIMEDB, "cluster", "up", "--nodes", "2", "--base-port", str(base), "--host", HOST,
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"node 1's internal (HTTP + 1000) port {base + 1001}" in done.stderr
    assert not (tmp_path / "data" / "node-0").exists()  # nothing was started


def test_cluster_up_help_names_each_port_a_node_uses() -> None:
    shown = subprocess.run(
        [LIMEDB, "cluster", "up", "--help"], capture_output=True, text=True, timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert "HTTP + 1000" in shown
    assert "--resp-base-port" in shown
