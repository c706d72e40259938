"""While a member that lost its data is replaced, the LimeCluster says so: phase Replacing,
condition Replacing with the ranges streamed so far, one event when it starts and one when it
is over; spec.autoReplace: false reaches the pods as the node's opt-out."""

from limedb_operator import manifests, replacement
from limedb_operator.scaling import NORMAL, Member, Observed, PodView, RingView, Transition, decide
from limedb_operator.status import build_status

NOW = "2026-01-01T00:00:00Z"
NODE = "http://lime-1.lime-headless.db.svc:8484"


def _obs(transition):
    pods = tuple(PodView(f"lime-{i}", i, f"127.0.0.{10 + i}", True) for i in range(3))
    members = tuple(Member(f"http://lime-{i}.lime-headless.db.svc:8484", NORMAL) for i in range(3))
    return Observed("lime", "db", 3, 3, 3, pods, RingView(5, members, transition))


def _replacing(status):
    return next(c for c in status["conditions"] if c["type"] == replacement.CONDITION)


def test_a_running_replace_is_the_replacing_phase_and_condition_with_progress():
    t = Transition("replace", NODE, "streaming", 12, 48)
    obs = _obs(t)
    cond = replacement.condition(obs.ring)
    status = build_status(obs, decide(obs), None, NOW, 2, [cond])
    assert status["phase"] == "Replacing"
    shown = _replacing(status)
    assert shown["status"] == "True" and shown["reason"] == "ReplacingMember"
    assert "lime-1" in shown["message"] and "12 of 48 ranges (25%)" in shown["message"]
    assert status["migration"]["kind"] == "replace"


def test_a_join_or_no_transition_is_not_replacing():
    for t in (None, Transition("join", NODE, "streaming", 1, 4)):
        assert replacement.condition(_obs(t).ring)["status"] == "False"
    assert replacement.condition(None)["status"] == "False"
    assert build_status(_obs(None), decide(_obs(None)), None, NOW, 2)["phase"] == "Running"


def test_one_event_when_the_replace_starts_and_one_when_it_is_over():
    running = replacement.condition(_obs(Transition("replace", NODE, "streaming", 0, 48)).ring)
    idle = replacement.condition(_obs(None).ring)
    started = replacement.events([idle], running)
    assert [e[1] for e in started] == ["ReplacingMember"]
    assert replacement.events([running], running) == []
    over = replacement.events([running], idle)
    assert over == [("Normal", "MemberReplaced", "lime-1 holds its ranges again")]
    assert replacement.events(None, idle) == []


def _env(spec_extra):
    spec = {
        "vnodes": 16,
        "replicationFactor": 3,
        "consistency": "quorum",
        "durability": "sync",
        **spec_extra,
    }
    return {e["name"]: e.get("value") for e in manifests.node_env("lime", "db", spec, 3)}


def test_auto_replace_false_reaches_the_pods_and_the_default_leaves_the_template_alone():
    assert _env({"autoReplace": False})["LIMEDB_AUTO_REPLACE"] == "false"
    assert "LIMEDB_AUTO_REPLACE" not in _env({"autoReplace": True})
    assert "LIMEDB_AUTO_REPLACE" not in _env({})
