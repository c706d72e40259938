"""Benchmark support: a local cluster of real `limedb serve` processes and wrk load against it.

Not a benchmark itself (run_all.py runs only bench_*.py); bench_cluster.py and
bench_migration.py import it from this folder, which Python puts first on the path of a script.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _tls import verify
from limedb.cluster_cli import start_node, stop_all

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""

# 50/50 GET/PUT of keys k0..k{BENCH_KEYS - 1} chosen uniformly, 100-byte values.
MIXED = (
    """
local value = string.rep("v", 100)
local keys = tonumber(os.getenv("BENCH_KEYS"))
init = function(args)
  math.randomseed(tonumber(args[1]))
end
request = function()
  local key = "/v1/kv/k" .. math.random(0, keys - 1)
  if math.random() < 0.5 then
    return wrk.format("PUT", key, {["Content-Type"] = "application/octet-stream"}, value)
  end
  return wrk.format("GET", key)
end
"""
    + _DONE
)

# GET of keys chosen uniformly from the lines of the file BENCH_KEY_FILE.
GET_LIST = (
    """
local keys = {}
for line in io.lines(os.getenv("BENCH_KEY_FILE")) do keys[#keys + 1] = line end
init = function(args)
  math.randomseed(tonumber(args[1]))
end
request = function()
  return wrk.format("GET", "/v1/kv/" .. keys[math.random(1, #keys)])
end
"""
    + _DONE
)


# The nodes run secure, as `limedb cluster up` runs them; admin calls present the secret.
SECRET = "limedb-benchmark-cluster-secret"
SECRET_HEADERS = {"x-cluster-secret": SECRET}


def start_node_with_env(
    url: str, port: int, data_dir: Path, seeds: list[str], env: dict[str, str]
) -> subprocess.Popen:
    """Start one node on 127.0.0.1:`port` with `env` added to this process's environment."""
    # start_node hands the node a copy of os.environ; ours is restored at once.
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return start_node(url, "127.0.0.1", port, data_dir, seeds, (), SECRET)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_ready(
    url: str, peers: int = 0, timeout_s: float = 60.0, tls: ssl.SSLContext | bool = True
) -> None:
    """Wait until `url` answers /readyz and its gossip sees `peers` live peers."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0, verify=tls) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/readyz").status_code == 200 and (
                    peers == 0 or _live_peers(client, url) == peers
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


def _live_peers(client: httpx.Client, url: str) -> int:
    peers = client.get(f"{url}/api/v1/cluster/gossip").json().get("peer_details", [])
    return sum(1 for p in peers if p["status"] == "active" and p["heartbeat"] > 0)


class LocalCluster:
    """N `limedb serve` processes on 127.0.0.1 with consecutive ports, each with all as seeds
    (https:// URLs when `env` turns TLS on, _tls.make_tls)."""

    def __init__(self, root: Path, nodes: int, base_port: int, env: dict[str, str]) -> None:
        self.verify = verify(env)
        scheme = "http" if self.verify is True else "https"
        self.urls = [f"{scheme}://127.0.0.1:{base_port + i}" for i in range(nodes)]
        self.procs: list[subprocess.Popen] = []
        self.root = root
        self.base_port = base_port
        self.env = env

    def __enter__(self) -> LocalCluster:
        try:
            for i, url in enumerate(self.urls):
                self.procs.append(
                    start_node_with_env(
                        url, self.base_port + i, self.root / f"n{i}", self.urls, self.env
                    )
                )
            for url in self.urls:
                wait_ready(url, peers=len(self.urls) - 1, tls=self.verify)
        except BaseException:
            stop_all(self.procs)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs)

    def preload(self, keys: int, batch: int = 1000, workers: int = 1) -> float:
        """Write k0..k{keys-1} (100-byte values) through every node in turn; returns keys/s."""
        value = "v" * 100
        started = time.monotonic()

        def put(start: int) -> None:
            url = self.urls[(start // batch) % len(self.urls)]
            items = [
                {"key": f"k{i}", "value": value} for i in range(start, min(keys, start + batch))
            ]
            with httpx.Client(timeout=120.0, verify=self.verify) as client:
                # A node busy flushing may shed load (429/503): back off and retry.
                for attempt in range(5):
                    response = client.post(f"{url}/v1/batch", json={"put": items})
                    if response.status_code == 200:
                        return
                    time.sleep(0.5 * (attempt + 1))
                response.raise_for_status()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(put, range(0, keys, batch)))
        return keys / (time.monotonic() - started)

    def wait_settled(self, timeout_s: float = 300.0) -> float:
        """Wait until no node has a flush or compaction left from loading (returns the seconds
        waited), so that a measurement taken next is not slowed by the load's after-work."""
        started = time.monotonic()
        with httpx.Client(timeout=5.0, verify=self.verify) as client:
            while time.monotonic() - started < timeout_s:
                busy = [
                    url
                    for url in self.urls
                    if _storage_busy(client.get(f"{url}/api/v1/health").json()["storage"])
                ]
                if not busy:
                    return time.monotonic() - started
                time.sleep(0.5)
        raise SystemExit(f"nodes still compacting after {timeout_s:.0f} s")


def _storage_busy(storage: dict) -> bool:
    return bool(storage["compaction_backlog_bytes"] or storage["immutable_memtable_bytes"])


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """User + system CPU time the node processes have used so far (from /proc)."""
    ticks = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    urls: list[str],
    script: str,
    connections: int,
    duration_s: int,
    env: dict[str, str],
    nodes: list[subprocess.Popen],
) -> dict:
    """One wrk process per URL, connections split between them, results merged; also the
    nodes' CPU time per operation, which does not depend on how much CPU they were given."""
    cpu_before = cpu_seconds(nodes)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    per = max(1, connections // len(urls))
    procs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{per}",
                f"-d{duration_s}s",
                "--timeout",
                "5s",
                "-s",
                path,
                url,
                "--",
                str(1000 + i),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )  # fmt: skip
        for i, url in enumerate(urls)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise SystemExit(f"wrk produced no summary:\n{out}")
        results.append(json.loads(line))
    cpu = cpu_seconds(nodes) - cpu_before
    os.unlink(path)
    requests = sum(r["requests"] for r in results)
    seconds = max(r["duration_us"] for r in results) / 1e6
    return {
        "ops_s": requests / seconds,
        "p50_ms": sum(r["p50_us"] for r in results) / len(results) / 1000,
        # The worst client's p99: a conservative merge of per-process histograms.
        "p99_ms": max(r["p99_us"] for r in results) / 1000,
        "errors": sum(r["errors"] for r in results),
        "non2xx": sum(r["non2xx"] for r in results),
        "requests": requests,
        "cpu_us_per_op": cpu / max(requests, 1) * 1e6,
    }
