"""LimeCluster status tells the user what the operator is doing and why."""

from limedb_operator.scaling import (
    LEAVING,
    NORMAL,
    Member,
    Observed,
    PodView,
    RingView,
    Transition,
    decide,
)
from limedb_operator.status import build_status, merge_conditions

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def _obs(desired, replicas, states, rf=3, transition=None, not_ready=()):
    pods = tuple(
        PodView(f"lime-{i}", i, f"127.0.0.{10 + i}", i not in not_ready) for i in range(replicas)
    )
    members = tuple(
        Member(f"http://lime-{i}.lime-headless.db.svc:8484", s) for i, s in enumerate(states)
    )
    return Observed("lime", "db", desired, rf, replicas, pods, RingView(4, members, transition))


def _conds(status):
    return {c["type"]: c for c in status["conditions"]}


def test_converged_cluster_is_running_and_available():
    o = _obs(3, 3, [NORMAL] * 3)
    s = build_status(o, decide(o), None, NOW, 2)
    c = _conds(s)
    assert s["phase"] == "Running" and s["readyNodes"] == 3 and s["nodes"] == 3
    assert s["ringEpoch"] == 4 and s["observedGeneration"] == 2
    assert s["selector"] == "app.kubernetes.io/name=limedb,app.kubernetes.io/instance=lime"
    assert c["Available"]["status"] == "True"
    assert c["Progressing"]["status"] == "False"
    assert c["Valid"]["status"] == "True"
    assert s["migration"] is None


def test_leaving_node_shows_scaling_down_rebalancing_and_progress():
    t = Transition("leave", "lime-3", "streaming", 12, 48, "2026-01-01T00:00:00Z")
    o = _obs(3, 4, [NORMAL] * 3 + [LEAVING], transition=t)
    s = build_status(o, decide(o), None, NOW, 3)
    c = _conds(s)
    assert s["phase"] == "Rebalancing"
    assert c["ScalingDown"]["status"] == "True"
    assert c["Rebalancing"]["status"] == "True"
    assert s["migration"]["rangesMoved"] == 12 and s["migration"]["rangesTotal"] == 48
    assert {
        "pod": "lime-3",
        "nodeId": "http://lime-3.lime-headless.db.svc:8484",
        "state": "Leaving",
    } in s["members"]


def test_refused_scale_below_rf_is_invalid_with_reason():
    o = _obs(2, 3, [NORMAL] * 3)
    s = build_status(o, decide(o), None, NOW, 5)
    c = _conds(s)
    assert c["Valid"]["status"] == "False"
    assert c["Valid"]["reason"] == "BelowReplicationFactor"
    assert s["phase"] == "Invalid"


def test_not_ready_node_marks_degraded():
    o = _obs(3, 3, [NORMAL] * 3, not_ready={2})
    s = build_status(o, decide(o), None, NOW, 1)
    c = _conds(s)
    assert c["Degraded"]["status"] == "True" and s["readyNodes"] == 2
    assert c["Available"]["status"] == "True"


def test_transition_time_changes_only_when_a_condition_flips():
    old = merge_conditions(None, [{"type": "Available", "status": "True"}], NOW, 1)
    same = merge_conditions(old, [{"type": "Available", "status": "True"}], LATER, 2)
    flip = merge_conditions(old, [{"type": "Available", "status": "False"}], LATER, 2)
    assert same[0]["lastTransitionTime"] == NOW
    assert flip[0]["lastTransitionTime"] == LATER
