"""The peers' configuration files and the CPU accounting of bench_peers.py, as pure functions.

Kept apart from the code that starts processes so that tests/unit/test_peer_configs.py can check
what each peer is told (durability, consistency, addresses) without starting or fetching one.
"""

from __future__ import annotations

from dataclasses import dataclass

# Murmur3Partitioner's token range is [-2**63, 2**63): one token per node, evenly spaced, gives
# the three nodes equal ranges (LimeDB's ring places keys evenly too).
_MIN_TOKEN = -(2**63)


@dataclass(frozen=True)
class CassandraNode:
    """One Cassandra node of the local peer cluster."""

    index: int  # 0-based
    address: str  # 127.0.0.(index + 1)
    root: str  # data, commit log, hints and caches live under it


def cassandra_address(index: int) -> str:
    """Node `index` listens on its own loopback address (Linux routes all of 127/8 to lo)."""
    return f"127.0.0.{index + 1}"


def cassandra_token(index: int, nodes: int) -> int:
    """The single initial token of node `index` of `nodes`, evenly spaced over Murmur3's range."""
    return _MIN_TOKEN + index * (2**64 // nodes)


def cassandra_yaml(node: CassandraNode, nodes: int, commitlog_sync: str) -> str:
    """cassandra.yaml for `node`: RF is a keyspace property (bench_peers creates it with 3);
    `commitlog_sync` is `batch` (fsync before acknowledging) or `periodic` (every 10 s, the
    shipped default)."""
    if commitlog_sync not in ("batch", "periodic"):
        raise ValueError(f"commitlog_sync must be batch or periodic, not {commitlog_sync!r}")
    sync = (
        "commitlog_sync: batch\n"
        if commitlog_sync == "batch"
        else "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms\n"
    )
    seeds = cassandra_address(0)
    return (
        "cluster_name: limedb-bench-peers\n"
        "num_tokens: 1\n"
        f"initial_token: {cassandra_token(node.index, nodes)}\n"
        "partitioner: org.apache.cassandra.dht.Murmur3Partitioner\n"
        "endpoint_snitch: SimpleSnitch\n"
        f"listen_address: {node.address}\n"
        f"rpc_address: {node.address}\n"
        "storage_port: 7000\n"
        "native_transport_port: 9042\n"
        "start_native_transport: true\n"
        "seed_provider:\n"
        "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider\n"
        "    parameters:\n"
        f'      - seeds: "{seeds}:7000"\n'
        f"data_file_directories:\n  - {node.root}/data\n"
        f"commitlog_directory: {node.root}/commitlog\n"
        f"hints_directory: {node.root}/hints\n"
        f"saved_caches_directory: {node.root}/saved_caches\n"
        f"cdc_raw_directory: {node.root}/cdc_raw\n"
        f"{sync}"
        "authenticator: AllowAllAuthenticator\n"
        "authorizer: AllowAllAuthorizer\n"
        # Nothing in the benchmark reads these; they only cost CPU and disk.
        "auto_snapshot: false\n"
        "dynamic_snitch: false\n"
    )


def redis_conf(port: int, directory: str, appendfsync: str) -> str:
    """redis.conf for one Redis Cluster node on 127.0.0.1:`port`: AOF on, fsync `always` (before
    the reply) or `everysec`; no RDB snapshots, so the AOF is the only durability."""
    if appendfsync not in ("always", "everysec"):
        raise ValueError(f"appendfsync must be always or everysec, not {appendfsync!r}")
    return (
        "bind 127.0.0.1\n"
        f"port {port}\n"
        f"dir {directory}\n"
        "daemonize no\n"
        "protected-mode no\n"
        "cluster-enabled yes\n"
        f"cluster-config-file nodes-{port}.conf\n"
        "cluster-node-timeout 5000\n"
        "appendonly yes\n"
        f"appendfsync {appendfsync}\n"
        'save ""\n'
        'logfile ""\n'
        "loglevel warning\n"
    )


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat (the command name, in
    parentheses, may itself hold spaces and parentheses: fields are counted after the last ')')."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_us_per_op(ticks_before: int, ticks_after: int, clk_tck: int, operations: int) -> float:
    """Server CPU microseconds per operation over a measurement (0 operations: no figure)."""
    if operations <= 0:
        return float("nan")
    return (ticks_after - ticks_before) / clk_tck / operations * 1e6


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (fraction 0.5 = median)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil, at least the first
    return sorted_values[int(rank) - 1]
