"""RESP benchmark: redis-benchmark against a LimeDB node and against redis-server, same run.

Anchor: Debian's redis-server with `appendonly yes` and `appendfsync everysec` (the durability
comparable to LimeDB's `periodic` mode: an fsync about every second / every 50 ms), measured
in the same run on the same machine. Reported:
- `redis-benchmark -q -n N -t set,get -P 1` and `-P 16` against one LimeDB node (RF=1,
  periodic durability) and against the anchor, interleaved, the best of --repeat runs each:
  LimeDB / redis-server ratios (goal at -P 1: >= 0.5 for both SET and GET);
- the same against one node of a 3-node RF=3 cluster (W=R=2), with its ratio to the anchor.

Every server is a real process. With two or more cores, each single server (LimeDB node or
redis-server) is pinned to CPU 0 and redis-benchmark to CPU 1; the cluster's nodes share all.

    .venv/bin/python benchmarks/bench_resp.py [--requests 200000] [--clients 50] [--repeat 3]
                                              [--no-cluster]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 0.5
# One core for the server under test, the other for redis-benchmark, when there are two:
# both servers get the same share of the machine whatever else is running.
TASKSET = shutil.which("taskset") if (os.cpu_count() or 1) >= 2 else None


def pinned(args: list[str], cpu: int | None) -> list[str]:
    return [TASKSET, "-c", str(cpu), *args] if TASKSET and cpu is not None else args


LIMEDB = str(Path(sys.executable).with_name("limedb"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout_s}s")


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(pinned(args, 0), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, proc, "redis-server")
    return proc, port


def start_limedb(workdir: Path, nodes: int, rf: int) -> tuple[list[subprocess.Popen], str, int]:
    """`nodes` LimeDB processes (periodic durability), all seeded with each other; returns
    the processes and the RESP address of node 0."""
    hosts = [f"127.0.0.{40 + i}" for i in range(nodes)]
    ports = []
    for host in hosts:
        while True:  # public port p and internal port p + 1000 both free
            port = free_port(host)
            if port + 1000 <= 65535:
                try:
                    with socket.socket() as other:
                        other.bind((host, port + 1000))
                    break
                except OSError:
                    continue
        ports.append(port)
    urls = [f"http://{host}:{port}" for host, port in zip(hosts, ports, strict=True)]
    resp_ports = [free_port(host) for host in hosts]
    procs = []
    for i, host in enumerate(hosts):
        data = workdir / f"node-{i}"
        data.mkdir(parents=True)
        env = {
            **os.environ,
            "LIMEDB_RESP_PORT": str(resp_ports[i]),
            "LIMEDB_DURABILITY": "periodic",
            "LIMEDB_REPLICATION_FACTOR": str(rf),
            "LIMEDB_LOG_LEVEL": "warning",
            "LIMEDB_CLUSTER_SECRET": "limedb-benchmark-cluster-secret",
        }
        args = [
            LIMEDB, "serve", "--host", host, "--port", str(ports[i]),
            "--data-dir", str(data / "data"), "--advertise-url", urls[i],
            "--seeds", ",".join(urls),
        ]  # fmt: skip
        log = open(data / "node.log", "ab")  # noqa: SIM115 - lives as long as the process
        cpu = 0 if nodes == 1 else None  # a cluster's nodes share both cores
        procs.append(
            subprocess.Popen(pinned(args, cpu), env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()
    for i, host in enumerate(hosts):
        wait_for_port(host, resp_ports[i], procs[i], f"limedb node {i}")
    if nodes > 1:
        wait_for_cluster(hosts[0], resp_ports[0], nodes)
    return procs, hosts[0], resp_ports[0]


def wait_for_cluster(host: str, port: int, nodes: int, timeout_s: float = 60) -> None:
    """Until INFO cluster on node 0 lists every member (gossip has converged)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["redis-cli", "-h", host, "-p", str(port), "info", "cluster"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if f"limedb_members:{nodes}" in info:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the {nodes}-node cluster did not converge within {timeout_s}s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def benchmark(
    host: str, port: int, pids: list[int], requests: int, clients: int, pipeline: int
) -> dict[str, tuple[float, float]]:
    """{"SET"|"GET": (requests per second, server CPU microseconds per request)}.

    The CPU time per request does not depend on how much of the machine the server got, so it
    is the steadier comparison on a shared machine."""
    results = {}
    for test in ("set", "get"):
        cpu_before = cpu_seconds(pids)
        done = subprocess.run(
            pinned(["redis-benchmark", "-h", host, "-p", str(port), "-n", str(requests),
                    "-c", str(clients), "-P", str(pipeline), "-t", test, "--csv"], 1),
            capture_output=True, text=True, timeout=1800, check=True,
        )  # fmt: skip
        cpu = cpu_seconds(pids) - cpu_before
        rows = list(csv.reader(io.StringIO(done.stdout)))
        rps = {row[0]: float(row[1]) for row in rows[1:] if len(row) > 1}
        if test.upper() not in rps or "error" in done.stderr.lower():
            raise RuntimeError(f"redis-benchmark failed:\n{done.stdout}\n{done.stderr}")
        results[test.upper()] = (rps[test.upper()], cpu / requests * 1e6)
    return results


def keep_best(
    figures: dict[tuple[str, int], dict[str, tuple[float, float]]],
    where: tuple[str, int],
    result: dict[str, tuple[float, float]],
) -> None:
    """The highest requests/s and the lowest CPU per request seen for each command."""
    best = figures.setdefault(where, result)
    for op, (rps, cpu) in result.items():
        best[op] = (max(best[op][0], rps), min(best[op][1], cpu))


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_configurations(clients: int) -> None:
    """Say how each side runs: both keep every key in memory here (one key), so the budgets
    that matter are durability and cores."""
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    print("configurations:")
    print(
        f"  redis-server: {' '.join(version[:3])}, appendonly yes, appendfsync everysec (an "
        "fsync about every second), no RDB snapshots (--save ''), one I/O thread, no "
        "maxmemory, pinned to CPU 0"
    )
    print(
        "  limedb: `limedb serve`, RF=1, durability periodic (fsync every 50 ms: 20x more "
        "often than the anchor), engine defaults (16 MiB memtable, 256 MiB block cache, bloom "
        "10 bits/key), pinned to CPU 0"
    )
    print("  limedb-3-node-rf3: 3 nodes, RF=3, W=R=2, periodic, nodes share both cores")
    print(f"  redis-benchmark: {clients} clients, pinned to CPU 1")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept")
    parser.add_argument("--no-cluster", action="store_true", help="skip the 3-node RF=3 figure")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run `make system-deps`", file=sys.stderr)
            return 2

    print_configurations(args.clients)
    figures: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-resp-") as tmp:
        root = Path(tmp)
        procs: list[subprocess.Popen] = []
        try:
            (root / "redis").mkdir()
            redis_proc, redis_port = start_redis(root / "redis")
            procs.append(redis_proc)
            node_procs, node_host, node_port = start_limedb(root / "single", 1, 1)
            procs += node_procs
            for pipeline in (1, 16):
                # Interleaved, and the best of --repeat runs kept, so that drifting machine
                # load hits both sides alike.
                for _ in range(args.repeat):
                    redis_run = benchmark(
                        "127.0.0.1", redis_port, [redis_proc.pid], args.requests, args.clients,
                        pipeline,
                    )  # fmt: skip
                    keep_best(figures, ("redis-server", pipeline), redis_run)
                    limedb_run = benchmark(
                        node_host, node_port, [p.pid for p in node_procs], args.requests,
                        args.clients, pipeline,
                    )  # fmt: skip
                    keep_best(figures, ("limedb", pipeline), limedb_run)
            stop(node_procs)
            if not args.no_cluster:
                cluster_procs, cluster_host, cluster_port = start_limedb(root / "three", 3, 3)
                procs += cluster_procs
                for pipeline in (1, 16):
                    figures[("limedb-3-node-rf3", pipeline)] = benchmark(
                        cluster_host,
                        cluster_port,
                        [p.pid for p in cluster_procs],
                        args.requests // 4,
                        args.clients,
                        pipeline,
                    )
        finally:
            stop(procs)

    print(
        f"\nredis-benchmark -n {args.requests} -c {args.clients} -t set / -t get: requests/s, "
        "server CPU us/request (all processes of the target), ratios to redis-server"
    )
    print(
        f"{'target':<20}{'-P':>3}{'SET/s':>10}{'GET/s':>10}{'SET us':>8}{'GET us':>8}"
        f"{'SET/s x':>9}{'GET/s x':>9}{'SET cpu x':>10}{'GET cpu x':>10}"
    )
    for (target, pipeline), result in figures.items():
        anchor = figures[("redis-server", pipeline)]
        (set_rps, set_cpu), (get_rps, get_cpu) = result["SET"], result["GET"]
        print(
            f"{target:<20}{pipeline:>3}{set_rps:>10,.0f}{get_rps:>10,.0f}{set_cpu:>8.1f}"
            f"{get_cpu:>8.1f}{set_rps / anchor['SET'][0]:>9.2f}{get_rps / anchor['GET'][0]:>9.2f}"
            f"{set_cpu / anchor['SET'][1]:>10.2f}{get_cpu / anchor['GET'][1]:>10.2f}"
        )
    single = figures[("limedb", 1)]
    anchor = figures[("redis-server", 1)]
    ratios = {op: single[op][0] / anchor[op][0] for op in ("SET", "GET")}
    verdict = "met" if min(ratios.values()) >= GOAL_RATIO else "NOT met"
    print(
        f"\ngoal at -P 1: LimeDB >= {GOAL_RATIO}x redis-server (appendonly everysec): {verdict} "
        f"(SET {ratios['SET']:.2f}x, GET {ratios['GET']:.2f}x requests/s)"
    )
    print(f"load average after the run: {os.getloadavg()[0]:.1f} (2 cores: above 2 means shared)")
    if not args.no_cluster:
        print("(3-node RF=3: -n requests/4 against node 0, quorum W=R=2, CPU of all 3 nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
