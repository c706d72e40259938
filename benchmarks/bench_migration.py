"""Migration benchmark: join a 4th node to a 3-node RF=3 cluster holding 1,000,000 keys
(100-byte values) while wrk keeps a constant 50/50 read/write load on the three nodes.

Prints the migration time, keys/s and MB/s streamed, and the client throughput before the
join (the anchor, measured in the same run on the same machine) and during it, with the ratio
during / before (goal >= 0.5; goal for the migration itself: < 60 s). The figures are written
into the "Migration" section of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_migration.py [--keys 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from limedb.cluster_cli import start_node, stop_all

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
# wrk: 50/50 GET/PUT of uniformly chosen preloaded keys, one JSON summary line at the end.
MIXED = """
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
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d,"non2xx":%d}\\n',
    summary.requests, summary.duration, summary.errors.status))
end
"""
GOAL_S = 60.0
GOAL_RATIO = 0.5
WINDOW_S = 2


def run_wrk(urls: list[str], connections: int, duration_s: int, env: dict[str, str]) -> dict:
    """One wrk process per URL for `duration_s`, connections split; ops/s of all together."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(MIXED)
        script = f.name
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
                script,
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
            raise RuntimeError(f"wrk produced no summary:\n{out}")
        results.append(json.loads(line))
    os.unlink(script)
    seconds = max(r["duration_us"] for r in results) / 1e6
    return {
        "ops_s": sum(r["requests"] for r in results) / seconds,
        "non2xx": sum(r["non2xx"] for r in results),
    }


class LocalCluster:
    """N `limedb serve` processes on 127.0.0.1, each with the others as seeds."""

    def __init__(self, root: Path, nodes: int, base_port: int, env: dict[str, str]) -> None:
        self.urls = [f"http://127.0.0.1:{base_port + i}" for i in range(nodes)]
        self.root = root
        self.base_port = base_port
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> LocalCluster:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            for i, url in enumerate(self.urls):
                self.procs.append(
                    start_node(url, "127.0.0.1", self.base_port + i, self.root / f"n{i}",
                               self.urls, ())
                )  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(saved)
        for url in self.urls:
            wait_ready(url)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs)


def preload(urls: list[str], keys: int, batch: int = 1000, workers: int = 4) -> float:
    """Write k0..k{keys-1} (100-byte values) through every node; returns keys/s."""
    value = "v" * 100
    started = time.monotonic()

    def put(start: int) -> None:
        url = urls[(start // batch) % len(urls)]
        items = [{"key": f"k{i}", "value": value} for i in range(start, min(keys, start + batch))]
        with httpx.Client(timeout=120.0) as client:
            for attempt in range(5):
                response = client.post(f"{url}/v1/batch", json={"put": items})
                if response.status_code == 200:
                    return
                time.sleep(0.5 * (attempt + 1))
            response.raise_for_status()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(0, keys, batch)))
    return keys / (time.monotonic() - started)


class LoadWindows:
    """wrk in back-to-back windows of WINDOW_S seconds until stopped, each window timed."""

    def __init__(self, urls: list[str], connections: int, env: dict[str, str]) -> None:
        self.urls = urls
        self.connections = connections
        self.env = env
        self.windows: list[tuple[float, float, dict]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                result = run_wrk(self.urls, self.connections, WINDOW_S, self.env)
                self.windows.append((start, time.monotonic(), result))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def __enter__(self) -> LoadWindows:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise SystemExit(f"the client load failed: {self.error!r}")

    def ops_s(self, since: float, until: float) -> float:
        inside = [r for s, e, r in self.windows if s >= since and e <= until]
        if not inside:  # a migration shorter than a window: take the overlapping ones
            inside = [r for s, e, r in self.windows if e > since and s < until]
        return sum(r["ops_s"] for r in inside) / max(len(inside), 1)


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


def join_and_wait(seed: str, node_url: str) -> tuple[dict, float]:
    """Join `node_url` through `seed`; returns the finished transition and its duration."""
    with httpx.Client(timeout=30.0) as client:
        started = time.monotonic()
        response = client.post(f"{seed}/admin/join", json={"node_url": node_url})
        if response.status_code != 202:
            raise SystemExit(f"join refused: {response.status_code} {response.text}")
        tid = response.json()["transition"]["id"]
        last_print = 0.0
        while True:
            status = client.get(f"{seed}/admin/status").json()
            last = status.get("last_transition") or {}
            if last.get("id") == tid and last["phase"] in ("done", "rolled_back"):
                if last["phase"] != "done":
                    raise SystemExit(f"migration rolled back: {last.get('reason')}")
                return last, time.monotonic() - started
            running = status.get("transition")
            if running and time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(
                    f"  {running['phase']:<9} {running['fraction'] * 100:5.1f}%  "
                    f"{running['keys_streamed']:>9,} keys  {running['rate'] / 1e6:6.1f} MB/s",
                    flush=True,
                )
            time.sleep(0.2)


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Migration\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 keys, shorter anchor")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--anchor-s", type=int, default=10, help="load before the join")
    parser.add_argument("--durability", default="periodic")
    parser.add_argument("--base-port", type=int, default=18600)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.keys = min(args.keys, 100_000)
        args.anchor_s = min(args.anchor_s, 6)

    env = {
        "LIMEDB_DURABILITY": args.durability,
        "LIMEDB_LOG_LEVEL": "warning",
        "LIMEDB_REPLICATION_FACTOR": "3",
    }
    wrk_env = {"BENCH_KEYS": str(args.keys)}
    root = Path(tempfile.mkdtemp(prefix="limedb-bench-migration-"))
    joiner = None
    try:
        with LocalCluster(root, 3, args.base_port, env) as cluster:
            print(f"preloading {args.keys:,} keys (100-byte values, RF=3) ...", flush=True)
            load_rate = preload(cluster.urls, args.keys)
            print(f"  {load_rate:,.0f} keys/s", flush=True)
            port = args.base_port + 3
            url = f"http://127.0.0.1:{port}"
            saved = dict(os.environ)
            os.environ.update({**env, "LIMEDB_AWAIT_JOIN": "true"})
            try:
                joiner = start_node(url, "127.0.0.1", port, root / "n3", cluster.urls, ())
            finally:
                os.environ.clear()
                os.environ.update(saved)
            wait_ready(url)

            with LoadWindows(cluster.urls, args.connections, wrk_env) as load:
                time.sleep(args.anchor_s)
                join_started = time.monotonic()
                print("joining the 4th node under load ...", flush=True)
                transition, migration_s = join_and_wait(cluster.urls[0], url)
                join_ended = time.monotonic()
                time.sleep(WINDOW_S)  # the window in flight at the end belongs to "during"
            before = load.ops_s(0, join_started)
            during = load.ops_s(join_started, join_ended)
    finally:
        if joiner is not None:
            stop_all([joiner])
        shutil.rmtree(root, ignore_errors=True)

    keys = transition["keys_streamed"]
    nbytes = transition["bytes_streamed"]
    stream_s = max(transition["progress"]["elapsed_s"], 1e-3)
    ratio = during / before if before else 0.0
    rows = [
        ("keys in the cluster", f"{args.keys:,} (100-byte values, RF=3)"),
        ("migration time (join to done)", f"{migration_s:.1f} s (goal < {GOAL_S:.0f} s)"),
        ("keys streamed", f"{keys:,} ({keys / migration_s:,.0f} keys/s)"),
        ("bytes streamed", f"{nbytes / 1e6:.1f} MB ({nbytes / 1e6 / migration_s:.1f} MB/s)"),
        ("ranges moved", f"{transition['ranges_moved']}"),
        ("client ops/s before (anchor)", f"{before:,.0f}"),
        ("client ops/s during", f"{during:,.0f}"),
        ("during / before", f"{ratio:.2f} (goal >= {GOAL_RATIO})"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(transition elapsed from its own record: {stream_s:.1f} s)")

    if not args.no_doc:
        table = "\n".join(f"| {name} | {value} |" for name, value in rows)
        intro = (
            f"`benchmarks/bench_migration.py{' --quick' if args.quick else ''}`, "
            f"{time.strftime('%Y-%m-%d')}: a 4th node joins a 3-node cluster under a constant "
            f"50/50 read/write wrk load ({args.connections} connections) on the three original "
            f"nodes; every process shares this machine's cores (durability {args.durability}, "
            f"stream throttle at its default)."
        )
        write_doc(
            "## Migration\n\n"
            + textwrap.fill(intro, 100)
            + "\n\n| measure | value |\n|---|---|\n"
            + table
            + "\n\nThe command: `.venv/bin/python benchmarks/bench_migration.py` (`--quick`: "
            "100,000 keys). The ratio is measured on a 2-core machine shared with other test "
            "runs, so it is noisy.\n"
        )
    ok = migration_s < GOAL_S and ratio >= GOAL_RATIO
    print("goals met" if ok else "goals NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
