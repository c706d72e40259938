"""A member killed with kill -9 and restarted on an empty data dir under its identity is
replaced automatically (issue 15, acceptance 4 without Kubernetes): the survivors stream its
ranges to it, quorum clients see no failure throughout, and afterwards every key reads back
from that node alone at consistency=one."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import orjson
import pytest
from support.cluster import Node, Workload, wait_for
from support.history import OK, History
from support.transitions import TRANSITION_TIMEOUT_S, Fleet, preload

pytestmark = pytest.mark.cluster

ENV = {"LIMEDB_VNODES": "16", "LIMEDB_CLEANUP_GRACE_MS": "300"}


def read_alone(url: str, keys: list[str]) -> dict[str, bytes | None]:
    """Each key as `url` holds it itself: consistency=one reads its own replica first."""
    values: dict[str, bytes | None] = {}
    with httpx.Client(timeout=10.0) as http:
        for key in keys:
            response = http.get(f"{url}/v1/kv/{key}", params={"consistency": "one"})
            assert response.status_code in (200, 404), response.text
            values[key] = response.content if response.status_code == 200 else None
    return values


def holds_everything_alone(fleet: Fleet, history: History, node: Node) -> None:
    """Every key of the history reads back from `node`'s own replica (consistency=one), and
    the whole cluster passes the history check."""

    def serves_reads() -> bool:
        health = fleet.http.get(f"{node.url}/api/v1/health").json()
        return health["storage"]["auto_replace"]["serves_replica_reads"]

    # Until then its coordinator skips its own replica and reads the others'.
    wait_for(serves_reads, 30.0, f"{node.url} to serve replica reads again")
    keys = sorted(history.keys())
    wait_for(
        lambda: not history.check_final(read_alone(node.url, keys).__getitem__),
        30.0,
        lambda: str(history.check_final(read_alone(node.url, keys).get)),
    )
    fleet.check(history)


def wait_replaced(fleet: Fleet, via: Node, node: Node) -> dict:
    """The last transition `via` reports once the automatic replace of `node` has ended."""

    def replaced() -> dict | None:
        last = fleet.status(via).get("last_transition") or {}
        if last.get("kind") == "replace" and last.get("phase") in ("done", "rolled_back"):
            return last
        return None

    def stuck() -> str:
        status = fleet.status(via)
        return (
            f"the automatic replace to end; {via.url} shows "
            f"{status.get('last_transition')!r}, active {status.get('transition')!r}\n"
            f"{node.url}'s log:\n{node.log_tail(60)}"
        )

    return wait_for(replaced, TRANSITION_TIMEOUT_S, stuck, 0.2)


def test_a_member_back_on_an_empty_disk_is_replaced_automatically(tmp_path: Path):
    fleet = Fleet(tmp_path, ENV, first_host=175)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        preload(fleet, history, 300)
        workload = Workload(history, [a.url, b.url], keys=60, threads=2)
        workload.start()
        try:
            # A member is one the others have heard: a node nobody heard yet is a late founder
            # to them, not a member back on an empty disk (limedb.cluster.rejoin).
            wait_for(
                lambda: a.hears(fleet.http, c) and b.hears(fleet.http, c),
                30.0,
                f"{a.url} and {b.url} to hear {c.url}",
            )
            c.kill()
            shutil.rmtree(c.data_dir / "data")
            c.start()  # same id, URL and ports: a pod back on a new, empty volume

            last = wait_replaced(fleet, a, c)
        finally:
            workload.stop()
        assert last["phase"] == "done", last
        assert last["keys_streamed"] > 0
        fleet.wait_converged()
        members = {m["url"]: m["state"] for m in fleet.status(a)["members"]}
        assert members == {a.url: "Normal", b.url: "Normal", c.url: "Normal"}
        failed = [op for op in history.ops if op.outcome != OK]
        assert not failed, f"{len(failed)} client requests failed, first: {failed[:3]}"
        holds_everything_alone(fleet, history, c)
    finally:
        fleet.stop()


def test_a_member_back_on_an_empty_disk_with_its_whole_cluster_is_replaced(tmp_path: Path):
    """A power loss: every node killed at once, one volume lost. The member starts first, on
    its empty disk, while no seed is up (it waits for one, `rejoin_wait_ms`); its seeds come
    back from their disks, a new run that never heard it in memory, and still know they heard
    it before (limedb.cluster.heard), so it is replaced, not taken back empty."""
    fleet = Fleet(tmp_path, ENV, first_host=230)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        preload(fleet, history, 300)
        seeds = (a, b)

        def remembered() -> bool:
            # What a seed heard is written off the event loop, soon after it hears it.
            for seed in seeds:
                path = seed.data_dir / "data" / "heard.json"
                if not path.exists() or c.url not in orjson.loads(path.read_bytes()).get(
                    "first_generation", {}
                ):
                    return False
            return True

        wait_for(remembered, 30.0, f"{a.url} and {b.url} to record that they heard {c.url}")
        for node in (a, b, c):
            node.kill()
        shutil.rmtree(c.data_dir / "data")
        c.start()
        wait_for(
            lambda: "no seed could be reached for REJOIN" in c.log_tail(20),
            30.0,
            lambda: f"{c.url} to wait for its seeds\n{c.log_tail(20)}",
        )
        for seed in seeds:
            seed.start()
        for seed in seeds:
            fleet.wait_ready(seed)
        last = wait_replaced(fleet, a, c)
        assert last["phase"] == "done", last
        assert last["keys_streamed"] > 0
        holds_everything_alone(fleet, history, c)
    finally:
        fleet.stop()


def test_a_member_killed_before_its_replace_committed_comes_back_still_waiting_for_it(
    tmp_path: Path,
):
    """The member back on an empty disk adopts the ring record and takes writes while it waits
    to be replaced, so its data dir no longer looks new. Killed before the replace commits, it
    comes back still refusing replica reads (limedb.cluster.replace_pending), not as a member
    answering from a store that never received its ranges; then it is replaced."""
    fleet = Fleet(tmp_path, {**ENV, "LIMEDB_CLEANUP_HOLD_MS": "15000"}, first_host=233)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        keys = preload(fleet, history, 300)
        wait_for(
            lambda: a.hears(fleet.http, c) and b.hears(fleet.http, c),
            30.0,
            f"{a.url} and {b.url} to hear {c.url}",
        )
        # A join held in its cleanup (cleanup_hold_ms): no replace can start meanwhile.
        d = fleet.start_joiner()
        with fleet.admin(a) as client:
            join = client.join(d.url)["transition"]["id"]
        wait_for(
            lambda: (fleet.status(a).get("transition") or {}).get("phase") == "cleanup",
            TRANSITION_TIMEOUT_S,
            f"join {join} to reach its cleanup",
            0.2,
        )
        fleet.members.append(d)
        log = c.data_dir / "node.log"

        def logged_since(offset: int, text: str) -> bool:
            return text in log.read_text(errors="replace")[offset:]

        c.kill()
        shutil.rmtree(c.data_dir / "data")
        offset = len(log.read_text(errors="replace"))
        c.start()
        wait_for(
            lambda: logged_since(offset, "asks the survivors to replace it"),
            30.0,
            lambda: f"{c.url} to ask to be replaced\n{c.log_tail(30)}",
        )
        c.kill()  # before its replace could even start
        offset = len(log.read_text(errors="replace"))
        c.start()
        wait_for(
            lambda: logged_since(offset, "that replace has not committed yet"),
            30.0,
            lambda: f"{c.url} to go on waiting for its replace\n{c.log_tail(30)}",
        )
        fleet.wait_ready(c)
        health = fleet.http.get(f"{c.url}/api/v1/health").json()
        assert health["storage"]["auto_replace"] == {
            "start_mode": "replace",
            "serves_replica_reads": False,
        }
        # Its own replica is skipped: consistency=one reads what the others hold.
        served = read_alone(c.url, keys)
        assert [k for k in keys if served[k] is None] == []
        assert (fleet.status(a).get("transition") or {}).get("id") == join  # still held
        last = wait_replaced(fleet, a, c)
        assert last["phase"] == "done", last
        holds_everything_alone(fleet, history, c)
    finally:
        fleet.stop()
