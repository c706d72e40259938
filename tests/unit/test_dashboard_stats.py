"""The numbers behind /admin/stats and the monitoring kit's families, from plain values:
which routes count as client traffic, the merged latency buckets, storage size, and the
ring / transition / hints / repair families of /metrics."""

from __future__ import annotations

from limedb.api.cluster_metrics import (
    hint_families,
    repair_families,
    ring_families,
    transition_families,
    verification_families,
)
from limedb.api.metrics import BUCKETS, RouteStats
from limedb.api.nodestats import (
    client_requests,
    is_client_route,
    newest_verification,
    storage_bytes,
)
from limedb.resp.command_stats import CommandStats


def samples(families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_only_key_routes_count_as_client_traffic():
    for route in ("/api/v1/get/{key}", "/v1/kv/{key}", "/v1/batch", "overloaded", "too_large"):
        assert is_client_route(route), route
    for route in (
        "/admin/stats",
        "/ui",
        "/metrics",
        "/readyz",
        "/api/v1/cluster/ring",
        "unmatched",
    ):
        assert not is_client_route(route), route


def test_client_requests_merge_buckets_and_status_classes():
    stats = RouteStats()
    stats.observe("GET", "/v1/kv/{key}", 200, 0.0004)
    stats.observe("PUT", "/v1/kv/{key}", 204, 0.02)
    stats.observe("GET", "/api/v1/get/{key}", 404, 0.0004)
    stats.observe("GET", "overloaded", 503, 0.0)
    stats.observe("GET", "/admin/stats", 200, 0.3)  # not counted
    summary = client_requests(stats)
    assert summary["total"] == 4
    assert summary["by_class"] == {"2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    counts = summary["latency"]["counts"]
    assert len(counts) == len(BUCKETS) + 1 and sum(counts) == 4
    assert counts[0] == 3  # 0.0 and 2 x 0.0004 are within the first bound (0.5 ms)
    assert counts[BUCKETS.index(0.025)] == 1
    assert summary["latency"]["sum_s"] == 0.0208


def test_storage_bytes_are_tables_and_memtables():
    stats = {"levels": [{"bytes": 100}, {"bytes": 50}], "memtable_bytes": 7,
             "immutable_memtable_bytes": 3}  # fmt: skip
    assert storage_bytes(stats) == 160
    assert storage_bytes({}) == 0


def test_ring_families_count_members_down_and_leave_out_those_that_left():
    status = {
        "epoch": 4,
        "replication_factor": 3,
        "members": [
            {"node_id": "a", "state": "Normal", "liveness": "alive"},
            {"node_id": "b", "state": "Normal", "liveness": "dead"},
            {"node_id": "c", "state": "Joining", "liveness": "suspect"},
            {"node_id": "d", "state": "Left", "liveness": "dead"},
        ],
    }
    got = samples(ring_families(status))
    assert got[("limedb_ring_epoch", ())] == 4
    assert got[("limedb_ring_members", ())] == 3
    assert got[("limedb_ring_members_down", ())] == 1
    assert got[("limedb_member_up", (("member", "b"), ("state", "Normal")))] == 0
    assert got[("limedb_member_up", (("member", "c"), ("state", "Joining")))] == 1
    assert not any(key[1] and ("member", "d") in key[1] for key in got)


def test_transition_families_follow_the_running_or_else_the_last_transition():
    running = {"id": "t1", "kind": "join", "phase": "streaming", "ranges_moved": 3,
               "ranges_total": 10, "keys_streamed": 30, "bytes_streamed": 3000, "fraction": 0.3}  # fmt: skip
    got = samples(transition_families({"transition": running, "last_transition": running}, None))
    assert got[("limedb_transition_running", ())] == 1
    assert got[("limedb_transition_phase", (("kind", "join"), ("phase", "streaming")))] == 1
    assert got[("limedb_transition_phase", (("kind", "join"), ("phase", "done")))] == 0
    assert got[("limedb_transition_ranges_moved", ())] == 3
    assert got[("limedb_transition_progress_ratio", ())] == 0.3
    done = {**running, "phase": "done", "ranges_moved": 10, "fraction": 1.0}
    got = samples(transition_families({"transition": None, "last_transition": done}, None))
    assert got[("limedb_transition_running", ())] == 0
    assert got[("limedb_transition_phase", (("kind", "join"), ("phase", "done")))] == 1
    none = samples(transition_families({"transition": None, "last_transition": None}, None))
    assert none == {("limedb_transition_running", ()): 0}


def test_hint_and_repair_families():
    hints = {"pending": 5, "stored": 9, "replayed": 4, "expired": 0,
             "pending_by_target": {"b": 5}}  # fmt: skip
    got = samples(hint_families(hints))
    assert got[("limedb_hints_pending", ())] == 5
    assert got[("limedb_hints_stored_total", ())] == 9
    assert got[("limedb_hints_pending_by_target", (("target", "b"),))] == 5
    repair = {"running": False, "runs": 2, "failed_runs": 1, "ranges_differing_total": 3,
              "keys_repaired_total": 40, "last": {"finished_ms": 5000}}  # fmt: skip
    got = samples(repair_families(repair))
    assert got[("limedb_repair_runs_total", ())] == 2
    assert got[("limedb_repair_ranges_differing_total", ())] == 3
    assert got[("limedb_repair_last_run_timestamp_seconds", ())] == 5.0
    assert samples(repair_families(None)) == {}


def test_verification_families_and_the_newest_record_of_the_members():
    last = {"epoch": 5, "result": "repaired", "finishedMs": 7000, "node": "a"}
    verification = {"running": None, "runs": {"ok": 3, "repaired": 1, "failed": 0},
                    "keys_repaired_total": 12, "last": last}  # fmt: skip
    got = samples(verification_families(verification))
    assert got[("limedb_verifications_total", (("result", "repaired"),))] == 1
    assert got[("limedb_verifications_total", (("result", "failed"),))] == 0
    assert got[("limedb_verification_keys_repaired_total", ())] == 12
    assert got[("limedb_verification_last_epoch", (("result", "repaired"),))] == 5
    assert got[("limedb_verification_last_timestamp_seconds", (("result", "repaired"),))] == 7.0
    assert samples(verification_families(None)) == {}
    older = {**last, "epoch": 4, "finishedMs": 3000}
    nodes = [{"stats": {"verification": older}}, {"stats": None}, {"stats": {"verification": last}}]
    assert newest_verification(nodes) == last
    assert newest_verification([{"stats": {"verification": None}}]) is None


def test_resp_command_totals_add_up_every_command():
    stats = CommandStats()
    stats.observe("set", 0.0002, False)
    stats.observe("get", 0.002, False)
    stats.observe("incrby", 0.0002, True)
    totals = stats.totals()
    assert totals["total"] == 3 and totals["errors"] == 1
    assert sum(totals["latency"]["counts"]) == 3
    got = samples(stats.collect())
    assert got[("limedb_resp_commands_total", (("command", "set"),))] == 1
    assert got[("limedb_resp_command_errors_total", (("command", "incrby"),))] == 1
