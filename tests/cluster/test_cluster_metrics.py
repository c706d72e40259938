"""What the monitoring kit reads from /metrics, on a real cluster: the ring and its members'
liveness, a transition's phase and streamed ranges and bytes, hints stored for a down replica,
repair runs, overload refusals and disk space."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.history import History
from support.transitions import Fleet, preload
from support.wait import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "limedb"
KIT = (CHART / "templates" / "monitoring-prometheusrule.yaml", CHART / "dashboards" / "limedb.json")
ENV = {"LIMEDB_VNODES": "16", "LIMEDB_REPLICATION_FACTOR": "3", "LIMEDB_CLEANUP_GRACE_MS": "300"}


def metrics(fleet: Fleet, node) -> dict[tuple[str, tuple], float]:
    text = fleet.http.get(f"{node.url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_ring_transition_hints_and_repair_metrics(fleet: Fleet):
    a, b, c = fleet.bootstrap(3)
    preload(fleet, History(), 2000, value_bytes=200)
    m = metrics(fleet, a)
    assert value(m, "limedb_ring_epoch") == 1
    assert value(m, "limedb_ring_members") == 3 and value(m, "limedb_ring_members_down") == 0
    assert value(m, "limedb_replication_factor") == 3
    assert value(m, "limedb_member_up", member=c.url, state="Normal") == 1
    assert value(m, "limedb_transition_running") == 0
    assert value(m, "limedb_overload_refusals_total") == 0
    assert value(m, "limedb_disk_total_bytes") > value(m, "limedb_disk_free_bytes") > 0

    d = fleet.start_joiner()
    fleet.join(d)
    m = metrics(fleet, a)
    assert value(m, "limedb_ring_epoch") == 2 and value(m, "limedb_ring_members") == 4
    assert value(m, "limedb_transition_phase", phase="done", kind="join") == 1
    assert value(m, "limedb_transition_phase", phase="streaming", kind="join") == 0
    moved = value(m, "limedb_transition_ranges_moved")
    assert moved == value(m, "limedb_transition_ranges_total") and moved > 0
    assert value(m, "limedb_transition_bytes_streamed") > 0
    assert value(m, "limedb_transition_keys_streamed") > 0
    started = value(m, "limedb_transition_started_timestamp_seconds")
    assert started <= value(m, "limedb_transition_updated_timestamp_seconds")

    repaired = httpx.post(
        f"{a.url}/admin/repair", headers={"x-cluster-secret": fleet.secret}, timeout=60
    )
    assert repaired.status_code == 200, repaired.text
    m = metrics(fleet, a)
    assert value(m, "limedb_repair_runs_total") == 1
    assert value(m, "limedb_repair_failed_runs_total") == 0
    assert value(m, "limedb_repair_ranges_differing_total") == 0
    assert value(m, "limedb_repair_last_run_timestamp_seconds") >= started

    # A down replica: the others see it dead and keep hints for it.
    c.kill()
    wait_for(
        lambda: value(metrics(fleet, a), "limedb_member_up", member=c.url, state="Normal") == 0,
        30,
        f"{a.url} to report {c.url} down",
    )
    assert value(metrics(fleet, a), "limedb_ring_members_down") == 1
    for i in range(50):
        fleet.http.put(f"{a.url}/v1/kv/while-down-{i}", content=b"v")
    m = metrics(fleet, a)
    assert value(m, "limedb_hints_stored_total") > 0
    assert value(m, "limedb_hints_pending") > 0
    assert value(m, "limedb_hints_pending_by_target", target=c.url) > 0

    # Every series the chart's alerts and Grafana dashboard read is one a node exports (the
    # RESP families only once a RESP command ran: tests/resp/test_resp_metrics.py).
    exported = {name for name, _ in m}
    used = set()
    for path in KIT:
        used.update(re.findall(r"\blimedb_[a-z_]+", path.read_text()))
    missing = {n for n in used - exported if not n.startswith("limedb_resp_")}
    assert not missing, f"the monitoring kit reads series no node exports: {sorted(missing)}"
