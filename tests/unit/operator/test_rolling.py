"""Issue 15: the pure rolling-upgrade decision (which pod restarts next, or why the roll waits)."""

from __future__ import annotations

from dataclasses import replace

from limedb_operator.rolling import (
    REFUSED_FORMAT_MARK,
    RollPod,
    RollView,
    condition,
    next_step,
    write_quorum,
)

OLD, NEW = "lime-old", "lime-new"


def _id(ordinal: int) -> str:
    return f"http://lime-{ordinal}.lime-headless.ns.svc:8484"


def _pods(*revisions: str, **changes: dict) -> tuple[RollPod, ...]:
    out = []
    for o, rev in enumerate(revisions):
        pod = RollPod(f"lime-{o}", o, rev, ready=True, node_id=_id(o))
        out.append(replace(pod, **changes.get(f"lime-{o}", {})))
    return tuple(out)


def _view(*revisions: str, **kw) -> RollView:
    changes = kw.pop("changes", {})
    base = dict(
        update_revision=NEW,
        replicas=len(revisions),
        pods=_pods(*revisions, **changes),
        members={_id(o): "Normal" for o in range(len(revisions))},
        transition=None,
        hints_pending={},
        replication_factor=3,
        write_quorum=2,
    )
    base.update(kw)
    return RollView(**base)


def test_highest_ordinal_restarts_first_then_the_next_lower():
    step = next_step(_view(OLD, OLD, OLD))
    assert (step.kind, step.pod, step.updated, step.total) == ("restart", "lime-2", 0, 3)
    assert next_step(_view(OLD, OLD, NEW)).pod == "lime-1"
    assert next_step(_view(OLD, NEW, NEW)).pod == "lime-0"


def test_every_pod_on_the_update_revision_is_done_and_no_pod_restarts():
    step = next_step(_view(NEW, NEW, NEW))
    assert step.kind == "done" and step.pod is None and step.updated == 3
    assert condition(step)["status"] == "False"


def test_a_pod_already_restarted_is_never_chosen_again_after_an_operator_restart():
    # The state is the revision each pod runs: lime-2 went, its successor runs NEW.
    for view in (_view(OLD, OLD, NEW), _view(NEW, OLD, NEW)):
        assert next_step(view).pod not in ("lime-2",)
    assert next_step(_view(NEW, NEW, NEW)).kind == "done"


def test_a_member_down_stops_the_roll_and_says_which():
    view = _view(OLD, OLD, OLD, changes={"lime-1": {"ready": False}})
    step = next_step(view)
    assert (step.kind, step.reason, step.pod) == ("wait", "PodsNotReady", None)
    assert "lime-1" in step.message
    cond = condition(step)
    assert (cond["type"], cond["status"], cond["reason"]) == ("Upgrading", "True", "PodsNotReady")


def test_the_pod_being_restarted_holds_the_next_one_until_it_is_back():
    terminating = _view(OLD, OLD, OLD, changes={"lime-2": {"terminating": True}})
    assert (next_step(terminating).kind, next_step(terminating).reason) == (
        "wait",
        "PodRestarting",
    )
    coming_up = _view(OLD, OLD, NEW, changes={"lime-2": {"ready": False}})
    assert next_step(coming_up).reason == "PodRestarting"
    # Another member down too: that is not the roll's doing.
    both = _view(OLD, OLD, NEW, changes={"lime-2": {"ready": False}, "lime-0": {"ready": False}})
    step = next_step(both)
    assert step.reason == "PodsNotReady" and "lime-0" in step.message


def test_hints_for_the_restarted_node_must_drain_before_the_next_restart():
    step = next_step(_view(OLD, OLD, NEW, hints_pending={_id(2): 17}))
    assert (step.kind, step.reason) == ("wait", "HintsPending")
    assert "17 hints to lime-2" in step.message
    # Hints for a node outside the cluster (an old member) hold nothing up.
    gone = "http://lime-7.lime-headless.ns.svc:8484"
    assert next_step(_view(OLD, OLD, NEW, hints_pending={gone: 3})).pod == "lime-1"


def test_a_running_ring_transition_or_a_joining_member_holds_the_roll():
    step = next_step(_view(OLD, OLD, OLD, transition="join of lime-3 runs"))
    assert (step.kind, step.reason) == ("wait", "TransitionInProgress")
    joining = _view(OLD, OLD, OLD, members={_id(0): "Normal", _id(1): "Joining", _id(2): "Normal"})
    assert next_step(joining).reason == "MembersNotNormal"


def test_a_restart_that_would_leave_fewer_than_w_replicas_never_starts():
    step = next_step(_view(OLD, OLD, OLD, write_quorum=3))  # consistency=all, RF 3
    assert (step.kind, step.reason) == ("wait", "QuorumAtRisk")
    assert "fewer than the 3" in step.message
    rf1 = _view(OLD, replication_factor=1, write_quorum=1)
    assert next_step(rf1).reason == "QuorumAtRisk"
    assert next_step(_view(OLD, OLD, replication_factor=2, write_quorum=1)).kind == "restart"


def test_write_quorum_follows_the_consistency_level():
    assert [write_quorum(c, 3) for c in ("one", "quorum", "all")] == [1, 2, 3]
    assert write_quorum("quorum", 5) == 3


def test_pods_beyond_the_replicas_are_not_part_of_the_roll():
    view = _view(OLD, OLD, OLD, replicas=2, changes={"lime-2": {"ready": False}})
    step = next_step(view)
    assert (step.kind, step.pod, step.total) == ("restart", "lime-1", 2)


def test_a_node_refusing_the_ring_format_is_a_refused_downgrade():
    error = (
        f"ValueError: ring record format 2 is newer than this node reads (1): {REFUSED_FORMAT_MARK}"
    )
    view = _view(OLD, OLD, NEW, changes={"lime-2": {"ready": False, "last_error": error}})
    step = next_step(view)
    assert (step.kind, step.reason) == ("refuse", "DowngradeRefused")
    assert "lime-2" in step.message and "ring format" in step.message
    cond = condition(step)
    assert (cond["status"], cond["reason"]) == ("False", "DowngradeRefused")


def test_a_new_revision_speaking_an_older_ring_format_is_refused():
    formats = {_id(0): 2, _id(1): 2, _id(2): 1}
    step = next_step(_view(OLD, OLD, NEW, ring_formats=formats))
    assert step.reason == "DowngradeRefused" and "format 1" in step.message
    upgrade = {_id(0): 1, _id(1): 1, _id(2): 2}
    assert next_step(_view(OLD, OLD, NEW, ring_formats=upgrade)).pod == "lime-1"


def test_no_revision_yet_is_done():
    assert next_step(_view(OLD, update_revision=None)).kind == "done"


def test_the_hints_of_every_answering_node_are_summed_and_formats_kept_by_node():
    from limedb_operator.scaling import freshest, ring_view_from_status

    def status(node: int, epoch: int, hints: dict) -> dict:
        members = [{"node_id": _id(o), "state": "normal"} for o in range(3)]
        return {"epoch": epoch, "node_id": _id(node), "members": members,
                "ring_format": 1, "version": "0.1.0", "hints_pending": hints}  # fmt: skip

    views = [
        ring_view_from_status(status(0, 4, {_id(2): 5, _id(1): 0})),
        ring_view_from_status(status(1, 5, {_id(2): 2})),
    ]
    ring = freshest(views)
    assert ring is not None and ring.epoch == 5
    assert ring.hints_pending == {_id(2): 7}
    assert ring.ring_formats == {_id(0): 1, _id(1): 1}
