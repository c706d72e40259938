"""Clock skew against real node processes on real skewed clocks (libfaketime): a cluster whose
clocks disagree by seconds keeps serving with exact TTLs; a node a minute off serves reads,
refuses to stamp writes and says so (health, metrics, `limedb status`); forged far-future
timestamps change nothing."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from limedb.cluster import rpc
from limedb.cluster.replica import Mutation
from limedb.hlc import MAX_TIMESTAMP, millis_of, pack
from support.cluster import Cluster, Node, wait_for
from support.faketime import skew

pytestmark = [pytest.mark.cluster, pytest.mark.faketime]

SECRET = "clock-skew-secret"
ENV = {"LIMEDB_CLUSTER_SECRET": SECRET}
MAX_OFFSET_S = 5.0  # the default max_clock_offset_ms
TEN_YEARS_MS = 10 * 365 * 86_400_000
LIMEDB = str(Path(sys.executable).with_name("limedb"))


def clock_of(client: httpx.Client, node: Node) -> dict:
    return client.get(f"{node.url}/api/v1/health", timeout=5.0).json()["clock"]


def wait_offsets(cluster: Cluster, expected_s: dict[int, float], tolerance_s: float) -> None:
    """Wait until every node measured both peers and reports its expected offset."""
    for node in cluster.nodes:

        def measured(node=node) -> bool:
            clock = clock_of(cluster.client, node)
            return (
                clock["peers_measured"] == len(cluster.nodes) - 1
                and abs(clock["offset_ms"] / 1000 - expected_s[node.index]) < tolerance_s
            )

        wait_for(measured, 30, f"{node.url} to measure its offset {expected_s[node.index]:+} s")


def put(client: httpx.Client, node: Node, key: str, value: bytes, **params) -> httpx.Response:
    return client.put(f"{node.url}/v1/kv/{key}", content=value, params=params)


def get(client: httpx.Client, node: Node, key: str, **params) -> httpx.Response:
    return client.get(f"{node.url}/v1/kv/{key}", params=params)


def assert_clocks_bounded(client: httpx.Client, nodes: list[Node]) -> None:
    """No node's hybrid clock runs further ahead of its own wall clock than the bound."""
    for node in nodes:
        ahead = clock_of(client, node)["hlc_ahead_ms"]
        assert ahead <= MAX_OFFSET_S * 1000, f"{node.url}: HLC {ahead} ms ahead of its clock"


def test_two_seconds_either_way_every_node_serves_and_ttls_last_thirty_seconds(
    make_cluster,
) -> None:
    cluster = make_cluster(3, env=ENV, start=False)
    on_time, behind, ahead = cluster.nodes
    skew(behind, -2.0)
    skew(ahead, +2.0)
    cluster.start()
    client = cluster.client
    wait_offsets(cluster, {0: 0.0, 1: -2.0, 2: +2.0}, tolerance_s=0.5)

    for writer in cluster.nodes:
        for i in range(10):
            key, value = f"w{writer.index}-{i}", f"v{writer.index}-{i}".encode()
            assert put(client, writer, key, value).status_code == 200
            for reader in cluster.nodes:
                response = get(client, reader, key)
                assert (response.status_code, response.content) == (200, value), reader.url
    for node in cluster.nodes:
        assert clock_of(client, node)["writes_allowed"] is True

    # One ttl=30 key through each node, all at once; each must live 30 s (±3 s) through every
    # node, measured on this test's clock from when its PUT was sent (not before 27 s) and
    # answered (gone by 33 s): the write happened in between.
    sent: dict[str, float] = {}
    written: dict[str, float] = {}

    def write_ttl(node: Node) -> None:
        key = f"ttl-via-{node.index}"
        sent[key] = time.monotonic()
        assert put(client, node, key, b"short-lived", ttl="30").status_code == 200
        written[key] = time.monotonic()

    writers = [threading.Thread(target=write_ttl, args=(n,)) for n in cluster.nodes]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    assert len(written) == 3
    gone_at: dict[tuple[str, int], float] = {}
    deadline = min(sent.values()) + 33.0
    while len(gone_at) < 9 and time.monotonic() < deadline:
        for key, at in written.items():
            for reader in cluster.nodes:
                if (key, reader.index) in gone_at:
                    continue
                status = get(client, reader, key).status_code
                now = time.monotonic()
                if status == 404:
                    gone_at[(key, reader.index)] = now
                    assert now - at >= 27.0, f"{key} gone after {now - at:.1f} s via {reader.url}"
                else:
                    assert status == 200
        time.sleep(0.25)
    missing = sorted(set((k, n.index) for k in written for n in cluster.nodes) - set(gone_at))
    assert not missing, f"still readable 33 s after the write: {missing}"
    lifetimes = {k: round(t - sent[k[0]], 1) for k, t in gone_at.items()}
    assert all(v <= 33.0 for v in lifetimes.values()), lifetimes
    assert_clocks_bounded(client, cluster.nodes)


@pytest.mark.parametrize("offset_s", [60.0, -60.0], ids=["ahead", "behind"])
def test_a_node_a_minute_off_serves_reads_and_refuses_to_stamp_writes(
    make_cluster, offset_s: float
) -> None:
    cluster = make_cluster(3, env=ENV, start=False)
    skewed = cluster.nodes[2]
    healthy = cluster.nodes[:2]
    clock = skew(skewed, 0.0)
    cluster.start()
    client = cluster.client
    for i in range(20):
        assert put(client, healthy[i % 2], f"before-{i}", b"%d" % i).status_code == 200

    clock.set(offset_s)
    wait_offsets(cluster, {0: 0.0, 1: 0.0, 2: offset_s}, tolerance_s=1.0)
    assert clock_of(client, skewed)["writes_allowed"] is False
    for node in healthy:
        assert clock_of(client, node)["writes_allowed"] is True

    # Reads through it succeed, at quorum and from its own replica.
    for i in range(20):
        response = get(client, skewed, f"before-{i}")
        assert (response.status_code, response.content) == (200, b"%d" % i)

    # Writes through it get the clock-offset error, naming the offset.
    for i in range(5):
        response = put(client, skewed, f"via-skewed-{i}", b"x")
        assert response.status_code == 503, response.text
        assert "Retry-After" in response.headers
        error = response.json()["error"]
        named = re.search(r"clock is ([+-]\d+\.\d{3}) s off the majority", error)
        assert named and abs(float(named[1]) - offset_s) < 1.0, error
        assert client.delete(f"{skewed.url}/v1/kv/before-{i}").status_code == 503

    # Healthy nodes keep writing; the skewed node takes their replicas (a lagging node too:
    # their timestamps are a minute ahead of its clock, but not of the majority's).
    for i in range(20):
        assert put(client, healthy[i % 2], f"after-{i}", b"a%d" % i).status_code == 200
    for i in range(20):
        wait_for(
            lambda i=i: get(client, skewed, f"after-{i}", consistency="one").content == b"a%d" % i,
            10,
            f"after-{i} on the skewed node's own replica",
        )
    # No write it stamped reached a peer, and nothing it was refused to delete is gone.
    for i in range(5):
        for node in healthy:
            assert get(client, node, f"via-skewed-{i}", consistency="one").status_code == 404
            assert get(client, node, f"before-{i}", consistency="one").status_code == 200
    assert_clocks_bounded(client, healthy)
    if offset_s > 0:
        # Its hybrid clock follows its own wall clock, not further.
        assert_clocks_bounded(client, [skewed])
    else:
        # It stored its peers' minute-ahead versions without dragging its clock to them (its
        # hybrid clock stays where it was when its wall clock went back a minute).
        lagging = clock_of(client, skewed)
        assert lagging["hlc_not_adopted"] > 0
        assert lagging["hlc_ahead_of_majority_ms"] <= MAX_OFFSET_S * 1000

    health = clock_of(client, skewed)
    assert health["writes_refused"] >= 10
    metrics = client.get(f"{skewed.url}/metrics").text
    assert "limedb_clock_writes_allowed 0.0" in metrics
    offset_line = next(
        line for line in metrics.splitlines() if line.startswith("limedb_clock_offset_seconds ")
    )
    assert abs(float(offset_line.split()[1]) - offset_s) < 1.0
    status = subprocess.run(
        [LIMEDB, "status", "--url", skewed.url],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert status.returncode == 0, status.stderr
    named = re.search(r"clock: ([+-]\d+\.\d{3}) s from the majority", status.stdout)
    assert named and abs(float(named[1]) - offset_s) < 1.0, status.stdout
    assert "REFUSES TO COORDINATE WRITES" in status.stdout

    # Its clock fixed, it coordinates writes again: at once if it lagged; if it ran ahead, once
    # time has caught up with its hybrid clock (stamps from it would be refused until then).
    clock.set(0.0)
    wait_offsets(cluster, {0: 0.0, 1: 0.0, 2: 0.0}, tolerance_s=1.0)
    if offset_s > 0:
        response = put(client, skewed, "too-early", b"x")
        assert response.status_code == 503 and "hybrid clock" in response.json()["error"]
    wait_for(lambda: clock_of(client, skewed)["writes_allowed"], 90, "writes allowed again")
    assert put(client, skewed, "fixed", b"ok").status_code == 200
    assert get(client, healthy[0], "fixed").content == b"ok"


async def _send(node: Node, secret: str | None, mutation: Mutation) -> rpc.RpcError:
    client = rpc.RpcClient(secret)
    try:
        with pytest.raises(rpc.RpcError) as refused:
            await client.call(node.host, node.internal_port, rpc.REPLICATE, mutation.encode(), 5)
        return refused.value
    finally:
        client.close()


def test_far_future_timestamps_are_refused_and_change_nothing(make_cluster) -> None:
    cluster = make_cluster(3, env=ENV)
    client = cluster.client
    now_ms = int(time.time() * 1000)
    forged = {
        "max": Mutation(b"forged-max", b"evil", MAX_TIMESTAMP),
        "ten-years": Mutation(b"forged-10y", b"evil", pack(now_ms + TEN_YEARS_MS)),
    }
    for node in cluster.nodes:
        for mutation in forged.values():
            without = asyncio.run(_send(node, None, mutation))
            assert without.code == rpc.UNAUTHORIZED
            wrong = asyncio.run(_send(node, "not-the-secret", mutation))
            assert wrong.code == rpc.UNAUTHORIZED
            refused = asyncio.run(_send(node, SECRET, mutation))
            assert refused.code == rpc.TIMESTAMP_REFUSED, refused
            assert "ahead of this node's clock" in refused.message
        assert clock_of(client, node)["timestamps_refused"] == len(forged)
        assert "refused" in node.log_tail(200)

    def writes_work_with_sane_stamps() -> None:
        for node in cluster.nodes:
            for key in ("forged-max", "forged-10y"):
                assert get(client, node, key, consistency="all").status_code == 404
            response = put(client, node, f"after-forgery-{node.index}", b"fine")
            assert response.status_code == 200, response.text
            stamped = millis_of(response.json()["ts"])
            assert abs(stamped - time.time() * 1000) < MAX_OFFSET_S * 1000
            for reader in cluster.nodes:
                assert get(client, reader, f"after-forgery-{node.index}").content == b"fine"
        assert_clocks_bounded(client, cluster.nodes)

    writes_work_with_sane_stamps()
    cluster.stop()
    cluster.start()
    writes_work_with_sane_stamps()
