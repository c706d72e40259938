"""Scaling decisions never shrink before a hand-off, never go below RF, and resume from facts."""

from limedb_operator.scaling import (
    LEAVING,
    LEFT,
    NORMAL,
    Member,
    Observed,
    PodView,
    RingView,
    Transition,
    decide,
    freshest,
    pvcs_to_delete,
    ring_view_from_status,
)


def nid(i):
    return f"http://lime-{i}.lime-headless.db.svc:8484"


def pods(n, ready=True, not_ready=()):
    return tuple(
        PodView(f"lime-{i}", i, f"127.0.0.{10 + i}", ready and i not in not_ready) for i in range(n)
    )


def ring(*states, epoch=1, transition=None, rf=None):
    members = tuple(Member(nid(i), s) for i, s in enumerate(states))
    return RingView(epoch, members, transition, rf)


def obs(desired, replicas, ring_view, rf=3, pod_count=None, **kw):
    n = replicas if pod_count is None else pod_count
    return Observed("lime", "db", desired, rf, replicas, kw.pop("pods", pods(n)), ring_view)


def test_first_sight_creates_the_statefulset_with_all_nodes():
    d = decide(Observed("lime", "db", 3, 3, None))
    assert d.step.kind == "create" and d.step.replicas == 3


def test_a_new_cluster_below_rf_is_not_created():
    d = decide(Observed("lime", "db", 2, 3, None))
    assert d.step.kind == "wait" and not d.valid


def test_scale_up_grows_the_statefulset_first():
    d = decide(obs(5, 3, ring(NORMAL, NORMAL, NORMAL)))
    assert (d.step.kind, d.step.replicas, d.scaling) == ("set-replicas", 5, "up")


def test_scale_up_waits_for_the_new_pod_to_be_ready_before_joining():
    view = ring(NORMAL, NORMAL, NORMAL)
    d = decide(obs(5, 5, view, pods=pods(5, not_ready={3})))
    assert d.step.kind == "wait" and d.step.reason == "PodsNotReady"


def test_scale_up_joins_new_nodes_one_at_a_time_lowest_ordinal_first():
    d = decide(obs(5, 5, ring(NORMAL, NORMAL, NORMAL)))
    assert d.step.kind == "join" and d.step.pod.name == "lime-3"
    assert d.step.pod.url == "http://127.0.0.13:8484"


def test_nothing_moves_while_the_database_runs_a_transition():
    t = Transition("join", nid(3), "streaming", 10, 40)
    d = decide(obs(5, 5, ring(NORMAL, NORMAL, NORMAL, "Joining", epoch=4, transition=t)))
    assert d.step.kind == "wait" and d.step.reason == "TransitionInProgress"
    assert "10/40" in d.step.message


def test_a_joining_member_without_transition_record_still_blocks():
    d = decide(obs(5, 5, ring(NORMAL, NORMAL, NORMAL, "Joining")))
    assert d.step.kind == "wait"


def test_converged_when_every_pod_is_a_ready_normal_member():
    d = decide(obs(3, 3, ring(NORMAL, NORMAL, NORMAL)))
    assert d.step.kind == "done" and d.step.reason == "Converged" and d.valid


def test_scale_down_starts_with_a_leave_of_the_highest_ordinal():
    d = decide(obs(3, 5, ring(*[NORMAL] * 5)))
    assert (d.step.kind, d.step.node_id, d.scaling) == ("leave", nid(4), "down")


def test_scale_down_never_shrinks_while_the_node_is_still_leaving():
    t = Transition("leave", nid(4), "streaming", 3, 9)
    d = decide(obs(3, 5, ring(*[NORMAL] * 4, LEAVING, transition=t)))
    assert d.step.kind == "wait"
    # ...even when the database no longer reports a transition record but the member is
    # still Leaving (e.g. the operator restarted and reads a node that lags behind).
    d = decide(obs(3, 5, ring(*[NORMAL] * 4, LEAVING)))
    assert d.step.kind == "wait"


def test_scale_down_shrinks_only_after_the_node_has_left():
    d = decide(obs(3, 5, ring(*[NORMAL] * 4, LEFT)))
    assert (d.step.kind, d.step.replicas, d.step.node_id) == ("set-replicas", 4, nid(4))


def test_a_node_removed_from_the_member_list_counts_as_left():
    d = decide(obs(3, 4, ring(NORMAL, NORMAL, NORMAL), pod_count=4))
    assert (d.step.kind, d.step.replicas) == ("set-replicas", 3)


def test_scale_down_continues_one_node_at_a_time():
    d = decide(obs(3, 4, ring(*[NORMAL] * 4, LEFT), pod_count=4))
    assert (d.step.kind, d.step.node_id) == ("leave", nid(3))


def test_scale_below_replication_factor_is_refused_and_size_kept():
    d = decide(obs(2, 3, ring(NORMAL, NORMAL, NORMAL)))
    assert not d.valid and d.invalid_reason == "BelowReplicationFactor"
    assert d.step.kind == "done"
    assert "replicationFactor=3" in d.invalid_message


def test_scale_to_rf_after_lowering_rf_is_allowed():
    d = decide(obs(1, 3, ring(NORMAL, NORMAL, NORMAL), rf=1))
    assert d.valid and d.step.kind == "leave" and d.step.node_id == nid(2)


def test_staying_nodes_missing_from_the_ring_join_before_any_leave():
    # lime-2 never joined: it must become a member before lime-3 may hand off to it.
    view = RingView(2, (Member(nid(0), NORMAL), Member(nid(1), NORMAL), Member(nid(3), NORMAL)))
    d = decide(obs(3, 4, view, pod_count=4))
    assert d.step.kind == "join" and d.step.pod.name == "lime-2"


def test_scale_down_waits_while_a_staying_node_is_not_ready():
    d = decide(obs(3, 4, ring(*[NORMAL] * 4), pods=pods(4, not_ready={1})))
    assert d.step.kind == "wait" and d.step.reason == "PodsNotReady"


def test_unknown_database_state_never_shrinks():
    d = decide(obs(3, 5, None))
    assert d.step.kind == "wait" and d.step.reason == "DatabaseUnreachable"


def test_growing_does_not_need_the_database():
    d = decide(obs(5, 3, None))
    assert d.step.kind == "set-replicas" and d.step.replicas == 5


def test_a_change_of_nodes_during_a_leave_waits_for_it_then_rejoins():
    # Scale 5 -> 3 started (lime-4 leaving), then the user asked for 5 again.
    t = Transition("leave", nid(4), "streaming", 3, 9)
    d = decide(obs(5, 5, ring(*[NORMAL] * 4, LEAVING, transition=t)))
    assert d.step.kind == "wait"
    d = decide(obs(5, 5, ring(*[NORMAL] * 4, LEFT, epoch=9)))
    assert d.step.kind == "join" and d.step.pod.name == "lime-4"


def test_ring_view_parses_the_admin_status_contract():
    view = ring_view_from_status(
        {
            "epoch": 7,
            "members": [
                {"node_id": "lime-0", "state": "normal"},
                {"nodeId": "lime-1", "state": "LEAVING"},
            ],
            "transition": {
                "kind": "leave",
                "node": "lime-1",
                "phase": "streaming",
                "ranges_moved": 5,
                "rangesTotal": 8,
            },
        }
    )
    assert view.epoch == 7
    assert view.members == (Member("lime-0", NORMAL), Member("lime-1", LEAVING))
    assert (view.transition.ranges_moved, view.transition.ranges_total) == (5, 8)
    assert ring_view_from_status({"epoch": 1, "members": [], "transition": None}).transition is None


def test_freshest_view_is_the_highest_epoch():
    assert freshest([ring(NORMAL, epoch=3), ring(NORMAL, NORMAL, epoch=5)]).epoch == 5
    assert freshest([]) is None


def test_pvc_policy_deletes_only_volumes_of_removed_pods():
    names = ["data-lime-0", "data-lime-3", "data-lime-4", "data-other-9"]
    assert pvcs_to_delete(names, "lime", 3, pods(3), "Delete") == ["data-lime-3", "data-lime-4"]
    assert pvcs_to_delete(names, "lime", 3, pods(3), "Retain") == []
    # A pod still terminating keeps its volume until it is gone.
    assert pvcs_to_delete(names, "lime", 3, pods(4), "Delete") == ["data-lime-4"]


def test_lowering_the_replication_factor_comes_before_the_scale_down():
    d = decide(obs(1, 3, ring(NORMAL, NORMAL, NORMAL, rf=3), rf=1))
    assert (d.step.kind, d.step.rf) == ("set-rf", 1)
    d = decide(obs(1, 3, ring(NORMAL, NORMAL, NORMAL, rf=1), rf=1))
    assert (d.step.kind, d.step.node_id) == ("leave", nid(2))


def test_raising_the_replication_factor_waits_for_the_new_nodes_to_join():
    d = decide(obs(3, 3, ring(NORMAL, rf=1), rf=3))
    assert (d.step.kind, d.step.pod.name) == ("join", "lime-1")
    d = decide(obs(3, 3, ring(NORMAL, NORMAL, NORMAL, rf=1), rf=3))
    assert (d.step.kind, d.step.rf) == ("set-rf", 3)


def test_ring_view_reads_the_nodes_admin_status_shape():
    raw = {
        "epoch": 3,
        "node_id": nid(0),
        "members": [
            {"node_id": nid(0), "url": nid(0), "state": "Normal", "liveness": "alive"},
            {"node_id": nid(3), "url": nid(3), "state": "Joining", "liveness": "alive"},
        ],
        "replication_factor": 3,
        "vnodes": 256,
        "transition": {
            "id": "t-1",
            "kind": "join",
            "change": f"join {nid(3)}",
            "phase": "streaming",
            "ranges_moved": 7,
            "ranges_total": 20,
        },
        "last_transition": None,
    }
    view = ring_view_from_status(raw)
    assert view.replication_factor == 3 and view.epoch == 3
    assert view.transition.kind == "join" and nid(3) in view.transition.node
    d = decide(obs(4, 4, view, pod_count=4))
    assert d.step.kind == "wait" and "7/20" in d.step.message
