"""A member killed with kill -9 and restarted on an empty data dir under its identity is
replaced automatically (issue 15, acceptance 4 without Kubernetes): the survivors stream its
ranges to it, quorum clients see no failure throughout, and afterwards every key reads back
from that node alone at consistency=one."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from support.cluster import Workload, wait_for
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

            def replaced() -> dict | None:
                last = fleet.status(a).get("last_transition") or {}
                if last.get("kind") == "replace" and last.get("phase") in ("done", "rolled_back"):
                    return last
                return None

            def stuck() -> str:
                status = fleet.status(a)
                return (
                    f"the automatic replace to end; {a.url} shows "
                    f"{status.get('last_transition')!r}, active {status.get('transition')!r}\n"
                    f"{c.url}'s log:\n{c.log_tail(60)}"
                )

            last = wait_for(replaced, TRANSITION_TIMEOUT_S, stuck, 0.2)
        finally:
            workload.stop()
        assert last["phase"] == "done", last
        assert last["keys_streamed"] > 0
        fleet.wait_converged()
        members = {m["url"]: m["state"] for m in fleet.status(a)["members"]}
        assert members == {a.url: "Normal", b.url: "Normal", c.url: "Normal"}
        failed = [op for op in history.ops if op.outcome != OK]
        assert not failed, f"{len(failed)} client requests failed, first: {failed[:3]}"
        keys = sorted(history.keys())

        def complete() -> bool:
            return not history.check_final(read_alone(c.url, keys).__getitem__)

        wait_for(complete, 30.0, lambda: str(history.check_final(read_alone(c.url, keys).get)))
        fleet.check(history)
    finally:
        fleet.stop()
