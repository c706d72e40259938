"""Cassandra as a benchmark peer: three real CassandraDaemon JVMs on 127.0.0.1-3 and the load
against them (peer_load's closed loop, prepared statements, QUORUM), from either driver:
- JavaLoad: tools/cassandra/CassandraLoad.java, the Java driver cassandra-all ships with, in a
  JVM of its own (its CPU is read from inside it, over the measured window only);
- PythonLoad: the Python cassandra-driver (libev reactor) in this process.

The jars come from scripts/peers.sh (cassandra-all and its dependencies from Maven Central);
each node gets its own cassandra.yaml (peer_configs.cassandra_yaml) and data under `root`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from peer_configs import CassandraNode, cassandra_address, cassandra_yaml
from peer_load import VALUE, LoadResult, Tally, key_chooser, server_ticks, stop_all

# What Cassandra's own conf/jvm17-server.options opens up on JDK 17 (its code reaches into
# these JDK internals); the shipped launcher passes the same.
_JDK17_OPENS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.base/jdk.internal.ref",
            "java.base/sun.nio.ch",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.nio",
            "java.base/java.util.concurrent",
            "java.base/java.util",
            "java.base/java.util.concurrent.atomic",
            "java.base/java.lang",
            "java.base/java.math",
            "java.base/java.lang.reflect",
            "java.base/java.net",
        )
    ),
]

_LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""

HEAP = "1G"


def fetch(repo_root: Path) -> Path:
    """The folder scripts/peers.sh fetched into (or found cached), holding lib/ and loadgen/;
    raises RuntimeError, with the reason, when it could not."""
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts/peers.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/peers.sh failed: {proc.stderr.strip()[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def version(lib: Path) -> str:
    jar = next(lib.glob("cassandra-all-*.jar"))
    return jar.stem.removeprefix("cassandra-all-")


def _command(lib: Path, node_root: Path) -> list[str]:
    return [
        "java",
        f"-Xms{HEAP}",
        f"-Xmx{HEAP}",
        "-XX:+UseG1GC",
        "-Xss256k",
        *_JDK17_OPENS,
        f"-Dcassandra.config=file://{node_root}/cassandra.yaml",
        f"-Dlogback.configurationFile={node_root}/logback.xml",
        f"-Dcassandra.logdir={node_root}/logs",
        f"-Dcassandra.storagedir={node_root}",
        "-Dcassandra-foreground=yes",
        # A fresh cluster whose nodes all hold their own tokens: nothing to stream, and nodes
        # two and three may join together.
        "-Dcassandra.consistent.rangemovement=false",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=1000",
        "-cp",
        f"{lib}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class CassandraCluster:
    """`nodes` CassandraDaemon processes on 127.0.0.1..N; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, lib: Path, root: Path, nodes: int, commitlog_sync: str) -> None:
        self.lib = lib
        self.root = root
        self.nodes = [
            CassandraNode(i, cassandra_address(i), str(root / f"c{i}")) for i in range(nodes)
        ]
        self.commitlog_sync = commitlog_sync
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> CassandraCluster:
        try:
            self._start(self.nodes[:1])
            self._start(self.nodes[1:])
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, nodes: list[CassandraNode]) -> None:
        for node in nodes:
            root = Path(node.root)
            (root / "logs").mkdir(parents=True, exist_ok=True)
            (root / "cassandra.yaml").write_text(
                cassandra_yaml(node, len(self.nodes), self.commitlog_sync)
            )
            (root / "logback.xml").write_text(_LOGBACK)
            out = open(root / "logs/stdout.log", "wb")  # noqa: SIM115 - lives as long as the JVM
            self.procs.append(
                subprocess.Popen(
                    _command(self.lib, root), stdout=out, stderr=subprocess.STDOUT, cwd=root
                )
            )
        for node, proc in zip(nodes, self.procs[-len(nodes) :], strict=True):
            deadline = time.monotonic() + 300
            while not _port_open(node.address, 9042):
                if proc.poll() is not None:
                    tail = (Path(node.root) / "logs/stdout.log").read_text()[-1500:]
                    raise RuntimeError(f"cassandra {node.address} exited: {tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cassandra {node.address} not serving CQL after 300 s")
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs)


class PythonLoad:
    """A cassandra-driver session on the cluster, the benchmark table, and the load on it."""

    def __init__(self, cluster: CassandraCluster) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import RoundRobinPolicy, TokenAwarePolicy

        logging.getLogger("cassandra").setLevel(logging.ERROR)
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
            consistency_level=ConsistencyLevel.QUORUM,
            request_timeout=10.0,
        )
        self.client = Cluster(
            [n.address for n in cluster.nodes],
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=5,
        )
        self.session = self.client.connect()
        self.session.execute(
            "CREATE KEYSPACE IF NOT EXISTS bench WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        )
        self.session.execute("CREATE TABLE IF NOT EXISTS bench.kv (k blob PRIMARY KEY, v blob)")
        self.put = self.session.prepare("INSERT INTO bench.kv (k, v) VALUES (?, ?)")
        self.get = self.session.prepare("SELECT v FROM bench.kv WHERE k = ?")

    def close(self) -> None:
        self.client.shutdown()

    def preload(self, keys: int) -> None:
        from cassandra.concurrent import execute_concurrent_with_args

        args = ((b"k%d" % i, VALUE) for i in range(keys))
        execute_concurrent_with_args(
            self.session, self.put, args, concurrency=96, raise_on_first_error=True
        )

    def run(self, in_flight: int, keys: int) -> callable:
        """A `run(deadline, tally)` for peer_load.measure: `in_flight` chains of requests, each
        issuing its next request from the previous one's callback."""

        def drive(deadline: float, tally: Tally) -> None:
            done = threading.Event()
            remaining = [in_flight]
            lock = threading.Lock()

            def chain(seed: int) -> None:
                choose = key_chooser(keys, seed)

                def issue() -> None:
                    if time.monotonic() >= deadline:
                        with lock:
                            remaining[0] -= 1
                            if remaining[0] == 0:
                                done.set()
                        return
                    key, write = choose()
                    started = time.perf_counter()
                    if write:
                        future = self.session.execute_async(self.put, (key, VALUE))
                    else:
                        future = self.session.execute_async(self.get, (key,))
                    future.add_callbacks(
                        lambda _rows: (tally.add(time.perf_counter() - started, True), issue()),
                        lambda _exc: (tally.add(0.0, False), issue()),
                    )

                issue()

            for i in range(in_flight):
                chain(os.getpid() * 1000 + i)
            done.wait()

        return drive


# The Java load generator needs the driver and what it links against, not the server's jars
# (whose logback would print to the stdout we read).
_CLIENT_JARS = ("cassandra-driver-core-", "guava-", "failureaccess-", "metrics-core-", "slf4j-api-")


def _reap(proc: subprocess.Popen) -> None:
    """The generator is gone when its caller is, even on Ctrl-C or an error in between."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _errors(output: str) -> str:
    """The generator's output without SLF4J's note that it has no logger bound."""
    lines = [ln for ln in output.splitlines() if not ln.startswith("SLF4J:")]
    return "\n".join(lines)[-800:]


class JavaLoad:
    """The load from tools/cassandra/CassandraLoad.java, a JVM of its own (compiled by peers.sh)."""

    def __init__(self, cluster: CassandraCluster, folder: Path) -> None:
        jars = [
            j for j in sorted((folder / "lib").glob("*.jar")) if j.name.startswith(_CLIENT_JARS)
        ]
        self.classpath = ":".join([str(folder / "loadgen"), *map(str, jars)])
        self.hosts = ",".join(n.address for n in cluster.nodes)
        self.pids = cluster.pids

    def _java(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["java", "-Xmx512m", "-XX:+UseParallelGC", "-cp", self.classpath, "CassandraLoad",
             self.hosts, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe: nothing can fill up unread
            text=True,
        )  # fmt: skip

    def preload(self, keys: int, in_flight: int = 96) -> None:
        proc = self._java("preload", str(keys), str(in_flight))
        try:
            out, _ = proc.communicate()
        finally:
            _reap(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"CassandraLoad preload failed: {_errors(out)}")

    def measure(self, in_flight: int, keys: int, warmup_s: float, duration_s: float) -> LoadResult:
        """Warm-up then the measured window, both in the generator; the servers' CPU is read when
        it prints START and when it prints its figures."""
        clk = os.sysconf("SC_CLK_TCK")
        proc = self._java("run", str(keys), str(in_flight), str(warmup_s), str(duration_s), "1")
        before = None
        figures = None
        other: list[str] = []
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("START"):
                    before = server_ticks(self.pids)
                elif line.startswith("{"):
                    after = server_ticks(self.pids)
                    figures = json.loads(line)
                else:
                    other.append(line)
        finally:
            _reap(proc)
        if proc.returncode != 0 or figures is None or before is None:
            raise RuntimeError(f"CassandraLoad run failed: {_errors(''.join(other))}")
        done = figures["requests"]
        return LoadResult(
            ops_s=done / figures["seconds"],
            p50_ms=figures["p50_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            errors=figures["errors"],
            requests=done,
            server_cpu_us_per_op=(after - before) / clk / max(done, 1) * 1e6,
            client_cpu_us_per_op=figures["client_cpu_s"] / max(done, 1) * 1e6,
        )
