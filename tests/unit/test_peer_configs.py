"""bench_peers.py tells each peer what the published figures say it was told, and counts server
CPU from /proc correctly: checked on the generated files and on this process, without fetching
or starting Cassandra or Redis."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peer_configs import (  # noqa: E402
    CassandraNode,
    cassandra_address,
    cassandra_token,
    cassandra_yaml,
    cpu_us_per_op,
    percentile,
    redis_conf,
    stat_cpu_ticks,
)


def _node(i: int) -> CassandraNode:
    return CassandraNode(i, cassandra_address(i), f"/tmp/peers/c{i}")


def test_cassandra_nodes_listen_on_their_own_loopback_address_and_seed_from_the_first() -> None:
    for i in range(3):
        conf = yaml.safe_load(cassandra_yaml(_node(i), 3, "batch"))
        assert conf["listen_address"] == conf["rpc_address"] == f"127.0.0.{i + 1}"
        seeds = conf["seed_provider"][0]["parameters"][0]["seeds"]
        assert seeds == "127.0.0.1:7000"
        assert conf["data_file_directories"] == [f"/tmp/peers/c{i}/data"]
        assert conf["commitlog_directory"] == f"/tmp/peers/c{i}/commitlog"


def test_cassandra_batch_fsyncs_before_acknowledging_and_periodic_every_ten_seconds() -> None:
    batch = yaml.safe_load(cassandra_yaml(_node(0), 3, "batch"))
    assert batch["commitlog_sync"] == "batch"
    assert "commitlog_sync_period" not in batch
    periodic = yaml.safe_load(cassandra_yaml(_node(0), 3, "periodic"))
    assert periodic["commitlog_sync"] == "periodic"
    assert periodic["commitlog_sync_period"] == "10000ms"
    with pytest.raises(ValueError):
        cassandra_yaml(_node(0), 3, "group")


def test_cassandra_tokens_split_the_murmur3_range_evenly() -> None:
    tokens = [
        yaml.safe_load(cassandra_yaml(_node(i), 3, "batch"))["initial_token"] for i in range(3)
    ]
    assert tokens == [cassandra_token(i, 3) for i in range(3)]
    assert tokens[0] == -(2**63)
    spans = [b - a for a, b in zip(tokens, tokens[1:] + [2**63], strict=True)]
    assert max(spans) - min(spans) <= 3
    assert all(-(2**63) <= t < 2**63 for t in tokens)


def _directives(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip())


def test_redis_conf_is_a_cluster_node_with_the_asked_aof_fsync_and_no_snapshots() -> None:
    always = _directives(redis_conf(7001, "/tmp/r1", "always"))
    assert always["port"] == "7001"
    assert always["cluster-enabled"] == "yes"
    assert always["appendonly"] == "yes"
    assert always["appendfsync"] == "always"
    assert always["save"] == '""'
    assert always["dir"] == "/tmp/r1"
    assert _directives(redis_conf(7001, "/tmp/r1", "everysec"))["appendfsync"] == "everysec"
    with pytest.raises(ValueError):
        redis_conf(7001, "/tmp/r1", "no")


def test_stat_ticks_are_read_after_a_command_name_holding_spaces_and_parentheses() -> None:
    fields = ["S"] + [str(n) for n in range(1, 50)]
    fields[11], fields[12] = "700", "45"  # utime, stime (fields 14 and 15 of the line)
    assert stat_cpu_ticks("4242 (java (x) y) " + " ".join(fields)) == 745


def test_stat_ticks_of_this_process_match_what_the_kernel_reports_through_os_times() -> None:
    sum(i * i for i in range(300_000))  # some CPU, so the figures are not both zero
    times = os.times()
    ticks = stat_cpu_ticks(Path("/proc/self/stat").read_text())
    seconds = ticks / os.sysconf("SC_CLK_TCK")
    assert seconds > 0
    assert abs(seconds - (times.user + times.system)) < 0.05


def test_cpu_per_op_and_percentiles() -> None:
    assert cpu_us_per_op(100, 300, 100, 10_000) == pytest.approx(200.0)
    assert math.isnan(cpu_us_per_op(0, 5, 100, 0))
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
