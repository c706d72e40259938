"""Cluster benchmark: a 3-node RF=3 W=R=2 cluster under a 50/50 read/write load from wrk.

Anchors measured in the same run, on the same machine:
- the mixed load against one standalone node (no replication): cluster / single ratio;
- the goal of the cluster issue: >= 10,000 ops/s with p99 < 25 ms (ratio ops/s / 10,000);
- GET of keys a node owns itself versus the same keys forwarded by another node on an RF=1
  cluster: forwarded / local ratio (goal >= 0.6).

Every node is a real `limedb serve` process; wrk (Debian package) generates the load, one wrk
process per node with the connections split between them, 100-byte values, keys uniform over
--keys (preloaded through /v1/batch). All processes share this machine's cores.

    .venv/bin/python benchmarks/bench_cluster.py [--duration 10] [--connections 48]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from limedb.cluster.ring import Ring
from limedb.cluster_cli import start_node, stop_all

GOAL_OPS = 10_000
GOAL_P99_MS = 25.0

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""

MIXED = (
    """
local value = string.rep("v", 100)
local keys = tonumber(os.getenv("BENCH_KEYS"))
local counter = 0
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


class LocalCluster:
    """N `limedb serve` processes on 127.0.0.1 with consecutive ports."""

    def __init__(self, root: Path, nodes: int, base_port: int, env: dict[str, str]) -> None:
        self.urls = [f"http://127.0.0.1:{base_port + i}" for i in range(nodes)]
        self.procs: list[subprocess.Popen] = []
        self.root = root
        self.base_port = base_port
        self.env = env

    def __enter__(self) -> LocalCluster:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            for i, url in enumerate(self.urls):
                self.procs.append(
                    start_node(
                        url, "127.0.0.1", self.base_port + i, self.root / f"n{i}", self.urls, ()
                    )
                )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self._wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs)

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            for url in self.urls:
                while True:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{url} did not become ready")
                    try:
                        if client.get(f"{url}/readyz").status_code == 200 and self._sees_all(
                            client, url
                        ):
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)

    def _sees_all(self, client: httpx.Client, url: str) -> bool:
        if len(self.urls) == 1:
            return True
        peers = client.get(f"{url}/api/v1/cluster/gossip").json().get("peer_details", [])
        live = [p for p in peers if p["status"] == "active" and p["heartbeat"] > 0]
        return len(live) == len(self.urls) - 1

    def preload(self, keys: int, value: bytes = b"v" * 100, batch: int = 1000) -> None:
        text = value.decode()
        with httpx.Client(timeout=60.0) as client:
            for start in range(0, keys, batch):
                url = self.urls[(start // batch) % len(self.urls)]
                items = [
                    {"key": f"k{i}", "value": text} for i in range(start, min(keys, start + batch))
                ]
                response = client.post(f"{url}/v1/batch", json={"put": items})
                response.raise_for_status()


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


def _line(name: str, r: dict) -> str:
    return (
        f"{name:<38} {r['ops_s']:>9,.0f} ops/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
        f"  {r['cpu_us_per_op']:6.1f} us CPU/op  errors {r['errors']}  non-2xx {r['non2xx']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--durability", default="sync", choices=("sync", "periodic", "none"))
    parser.add_argument("--base-port", type=int, default=18484)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `bash scripts/system-deps.sh`", file=sys.stderr)
        return 2
    env = {"LIMEDB_DURABILITY": args.durability, "LIMEDB_LOG_LEVEL": "warning"}
    wrk_env = {"BENCH_KEYS": str(args.keys)}
    print(
        f"cluster benchmark: {args.duration}s per run, {args.connections} connections, "
        f"100-byte values, 50/50 read/write over {args.keys:,} keys, durability {args.durability}, "
        f"{os.cpu_count()} cores shared by every process"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        with LocalCluster(root / "single", 1, args.base_port, env) as single:
            single.preload(args.keys)
            anchor = run_wrk(
                single.urls, MIXED, args.connections, args.duration, wrk_env, single.procs
            )
        print(_line(f"anchor: 1 node, no replication ({args.durability})", anchor))

        cluster_env = {**env, "LIMEDB_REPLICATION_FACTOR": "3"}
        with LocalCluster(root / "rf3", 3, args.base_port + 10, cluster_env) as cluster:
            cluster.preload(args.keys)
            mixed = run_wrk(
                cluster.urls, MIXED, args.connections, args.duration, wrk_env, cluster.procs
            )
        print(_line(f"3 nodes, RF=3, W=R=2 ({args.durability})", mixed))

        if args.durability != "periodic":
            # For reference: fsync every 50 ms instead of before each acknowledgement (with
            # three copies, as Cassandra's default commit log does).
            periodic_env = {**cluster_env, "LIMEDB_DURABILITY": "periodic"}
            with LocalCluster(root / "rf3p", 3, args.base_port + 30, periodic_env) as cluster:
                cluster.preload(args.keys)
                periodic = run_wrk(
                    cluster.urls, MIXED, args.connections, args.duration, wrk_env, cluster.procs
                )
            print(_line("3 nodes, RF=3, W=R=2 (periodic)", periodic))

        rf1_env = {**env, "LIMEDB_REPLICATION_FACTOR": "1"}
        with LocalCluster(root / "rf1", 3, args.base_port + 20, rf1_env) as rf1:
            rf1.preload(args.keys)
            ring = Ring(rf1.urls, vnodes=256)
            owned = [
                f"k{i}" for i in range(args.keys) if ring.owner_url(f"k{i}".encode()) == rf1.urls[0]
            ]
            key_file = root / "owned.txt"
            key_file.write_text("\n".join(owned) + "\n")
            get_env = {"BENCH_KEY_FILE": str(key_file)}
            local = run_wrk(
                rf1.urls[:1], GET_LIST, args.connections, args.duration, get_env, rf1.procs
            )
            forwarded = run_wrk(
                rf1.urls[1:2], GET_LIST, args.connections, args.duration, get_env, rf1.procs
            )
        print(_line("GET local (RF=1, owner answers)", local))
        print(_line("GET forwarded (RF=1, via a peer)", forwarded))

    print()
    print(f"cluster / single node:        {mixed['ops_s'] / anchor['ops_s']:.2f}x")
    print(
        f"cluster / goal {GOAL_OPS:,} ops/s:   {mixed['ops_s'] / GOAL_OPS:.2f}x "
        f"(p99 {mixed['p99_ms']:.1f} ms, goal < {GOAL_P99_MS:.0f} ms)"
    )
    print(f"forwarded GET / local GET:    {forwarded['ops_s'] / local['ops_s']:.2f}x (goal >= 0.6)")
    print(
        f"CPU per op, cluster / single:  {mixed['cpu_us_per_op'] / anchor['cpu_us_per_op']:.2f}x; "
        f"if the nodes had both cores to themselves: ~{2e6 / mixed['cpu_us_per_op']:,.0f} ops/s"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share the cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
