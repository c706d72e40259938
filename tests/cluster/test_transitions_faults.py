"""Ring transitions survive kill -9 of a participant: the joining node, a streaming source or
the node driving the transition is killed mid-stream and the join resumes (or, when the
joining node never comes back, rolls back cleanly); afterwards no acknowledged write is lost,
deleted keys stay deleted and each key is on exactly its RF owners. Also: a second change
while one runs, and a leave below RF, are refused with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from limedb.client import Refused
from support.cluster import SECRET, Node, Workload, wait_for
from support.history import History
from support.transitions import Fleet, preload

pytestmark = pytest.mark.cluster

# Slow streaming (1 MB/s over ~4 MB to move) leaves seconds to act while the join is running.
ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    "LIMEDB_STREAM_MB_PER_S": "1",
}
KEYS, VALUE_BYTES = 2500, 2000
LIMEDB = str(Path(sys.executable).with_name("limedb"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, ENV, first_host=140)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def table_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The same cluster with ranges streamed as tables, set explicitly (the default since
    session 9; the `fleet` fixture follows the default)."""
    fleet = Fleet(tmp_path, {**ENV, "LIMEDB_STREAM_MODE": "tables"}, first_host=140)
    try:
        yield fleet
    finally:
        fleet.stop()


def wait_streaming(fleet: Fleet, via: Node, fraction: float) -> dict:
    def far_enough() -> dict | None:
        t = fleet.status(via)["transition"]
        if t is not None and t["phase"] == "streaming" and t["fraction"] >= fraction:
            return t
        return None

    return wait_for(far_enough, 60.0, f"the join to stream {fraction:.0%}", 0.1)


def table_transfers(node: Node) -> dict:
    """The node's table-streaming counters (limedb.cluster.table_streams)."""
    return httpx.get(f"{node.url}/api/v1/health", timeout=5.0).json()["storage"]["table_streaming"]


def transferring(node: Node, side: str) -> bool:
    """Whether `node` has a table transfer `side` ("sending", "receiving") under way."""
    return table_transfers(node)[f"table_transfers_{side}"] > 0


def wait_transfer(node: Node, side: str) -> None:
    """Until `node` has a table transfer `side` under way: a table cut on the source and
    half sent, or arriving at the target."""
    wait_for(
        lambda: transferring(node, side) or None,
        60.0,
        f"a table transfer {side} on {node.url}",
        0.05,
    )


def wait_mid_stream(fleet: Fleet, via: Node, watched: Node, side: str) -> dict:
    """The join's transition (as `via` reports it) while it streams: past 15% of its ranges,
    or with a table transfer `side` ("sending", "receiving") on `watched`. Table streaming
    counts progress in whole groups of ranges, which the parallel transfers finish at about
    the same moment, so its fraction can go from 0 to the end between two looks; a transfer
    under way is the moment in the middle."""

    def under_way() -> dict | None:
        t = fleet.status(via)["transition"]
        if t is None or t["phase"] != "streaming":
            return None
        if t["fraction"] >= 0.15 or transferring(watched, side):
            return t
        return None

    return wait_for(under_way, 60.0, f"the join to be streaming (a transfer {side})", 0.05)


def start_join(fleet: Fleet, node: Node) -> str:
    with fleet.admin() as client:
        return client.join(node.url)["transition"]["id"]


@pytest.mark.parametrize("victim", ["joining node", "streaming source", "driving node"])
def test_join_resumes_after_kill_9_of_a_participant(fleet: Fleet, victim: str):
    history = History()
    a, b, c = fleet.bootstrap(3)
    preload(fleet, history, KEYS, VALUE_BYTES)
    d = fleet.start_joiner()
    # The driver is the first live node id of both rings; ids are URLs, so it is `a`.
    killed = {"joining node": d, "streaming source": c, "driving node": a}[victim]
    survivors = [n for n in (a, b, c) if n is not killed]
    workload = Workload(history, [n.url for n in survivors], keys=150, threads=3)
    workload.start()
    try:
        tid = start_join(fleet, d)
        with fleet.admin(b) as client, pytest.raises(Refused) as refused:
            client.leave(c.url)
        assert refused.value.running_transition == tid
        with fleet.admin(c) as client:  # asking again for the same join is not an error
            assert client.join(d.url)["transition"]["id"] == tid
        watched, side = (c, "sending") if victim == "streaming source" else (d, "receiving")
        running = wait_mid_stream(fleet, b, watched, side)
        assert running["driver"] == a.url

        killed.kill()
        if victim == "driving node":
            wait_for(
                lambda: (fleet.status(b)["transition"] or {}).get("driver") == b.url,
                30.0,
                "b to take over driving the transition",
            )
        if victim == "streaming source":
            # The join finishes from the surviving replicas; the source comes back afterwards.
            last = fleet.wait_transition(tid, via=b)
            killed.start()
            fleet.wait_ready(killed)
        else:
            killed.start()
            fleet.wait_ready(killed)
            last = fleet.wait_transition(tid, via=b)
    finally:
        workload.stop()
    assert last["phase"] == "done", last
    fleet.members.append(d)
    fleet.wait_converged()
    fleet.check(history, timeout_s=45.0)
    assert not history.check_reads(), history.check_reads()[:5]


@pytest.mark.parametrize("victim", ["joining node", "streaming source", "driving node"])
def test_join_resumes_after_kill_9_in_the_middle_of_a_table_transfer(
    table_fleet: Fleet, victim: str
):
    fleet = table_fleet
    history = History()
    a, b, c = fleet.bootstrap(3)
    preload(fleet, history, KEYS, VALUE_BYTES)
    d = fleet.start_joiner()
    killed = {"joining node": d, "streaming source": c, "driving node": a}[victim]
    survivors = [n for n in (a, b, c) if n is not killed]
    workload = Workload(history, [n.url for n in survivors], keys=150, threads=3)
    workload.start()
    try:
        tid = start_join(fleet, d)
        # The moment: a table is cut (the source's side) and half sent (the target's side).
        watched, side = (c, "sending") if victim == "streaming source" else (d, "receiving")
        wait_transfer(watched, side)
        killed.kill()
        if victim == "streaming source":
            last = fleet.wait_transition(tid, via=b)
            killed.start()
            fleet.wait_ready(killed)
        else:
            killed.start()
            fleet.wait_ready(killed)
            last = fleet.wait_transition(tid, via=b)
    finally:
        workload.stop()
    assert last["phase"] == "done", last
    assert table_transfers(d)["tables_ingested"] > 0
    assert table_transfers(d)["tables_pulled"] > 0  # straight from the source, not relayed
    fleet.members.append(d)
    fleet.wait_converged()
    fleet.check(history, timeout_s=45.0)
    assert not history.check_reads(), history.check_reads()[:5]


@pytest.mark.parametrize("mode", ["tables", "keys"])
def test_join_rolls_back_when_the_joining_node_stays_dead(tmp_path: Path, mode: str):
    env = {**ENV, "LIMEDB_TRANSITION_TIMEOUT_S": "3", "LIMEDB_STREAM_MODE": mode}
    fleet = Fleet(tmp_path, env, first_host=150)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        preload(fleet, history, KEYS, VALUE_BYTES)
        d = fleet.start_joiner()
        workload = Workload(history, [a.url, b.url, c.url], keys=150, threads=3)
        workload.start()
        try:
            tid = start_join(fleet, d)
            if mode == "tables":
                # Mid-stream: a table arriving at the joiner. (The progress fraction counts
                # whole groups of ranges, which the parallel transfers finish at about the
                # same moment: seeing it move can be seeing the streaming end.)
                wait_transfer(d, "receiving")
            else:
                wait_streaming(fleet, b, 0.1)
            d.kill()
            last = fleet.wait_transition(tid, via=b)
        finally:
            workload.stop()
        assert last["phase"] == "rolled_back"
        assert "unreachable" in last["reason"]
        fleet.wait_converged()
        status = fleet.status(c)
        assert sorted(m["node_id"] for m in status["members"]) == sorted([a.url, b.url, c.url])
        fleet.check(history)
        # The ring is free again: a new change is accepted.
        with fleet.admin() as client:
            client.set_replication_factor(2)
    finally:
        fleet.stop()


@pytest.mark.parametrize("same_id", [False, True], ids=["new id", "same id"])
def test_replace_streams_a_dead_nodes_ranges_from_the_survivors(tmp_path: Path, same_id: bool):
    env = {"LIMEDB_VNODES": "16", "LIMEDB_CLEANUP_GRACE_MS": "300"}
    fleet = Fleet(tmp_path, env, first_host=160 + 5 * same_id)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        preload(fleet, history, 1500)
        c.kill()
        wait_for(
            lambda: {m["url"]: m["liveness"] for m in fleet.status(a)["members"]}[c.url] == "dead",
            30.0,
            "the killed node to be judged dead",
        )
        # The same id is a pod coming back under its name on a new, empty volume.
        replacement = fleet.start_joiner({"LIMEDB_NODE_ID": c.url} if same_id else None)
        workload = Workload(history, [a.url, b.url], keys=150, threads=3)
        workload.start()
        try:
            last = fleet.run(lambda client: client.replace(c.url, replacement.url))
        finally:
            workload.stop()
        assert last["kind"] == "replace" and last["keys_streamed"] > 0
        fleet.members = [a, b, replacement]
        fleet.wait_converged()
        members = {m["url"]: m["state"] for m in fleet.status(a)["members"]}
        assert members[replacement.url] == "Normal"
        # A new id leaves the dead one behind as Left; the same id now lives at the new URL.
        assert members.get(c.url) == (None if same_id else "Left")
        fleet.check(history)
    finally:
        fleet.stop()


def test_leave_below_rf_is_refused_and_status_is_served_as_json_by_the_cli(fleet: Fleet):
    a, b, c = fleet.bootstrap(3)
    with fleet.admin(b) as client, pytest.raises(Refused) as refused:
        client.leave(c.url)
    assert "replication factor 3" in str(refused.value)
    result = subprocess.run(
        [LIMEDB, "admin", "status", "--json", "--url", a.url],
        capture_output=True,
        timeout=30,
        check=True,
        env={**os.environ, "LIMEDB_CLUSTER_SECRET": SECRET},
    )
    status = orjson.loads(result.stdout)
    assert status["transition"] is None
    assert status["epoch"] == 1
    assert sorted(m["url"] for m in status["members"]) == sorted([a.url, b.url, c.url])
    assert {m["state"] for m in status["members"]} == {"Normal"}
    refused_cli = subprocess.run(
        [LIMEDB, "admin", "leave", c.url, "--url", a.url, "--secret", SECRET],
        capture_output=True,
        timeout=30,
    )
    assert refused_cli.returncode == 3
    assert b"replication factor" in refused_cli.stderr
