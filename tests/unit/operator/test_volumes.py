"""Growing storage.size grows exactly the members' claims, and status says which are pending."""

from dataclasses import replace

from limedb_operator.scaling import Observed, decide
from limedb_operator.status import build_status
from limedb_operator.volumes import ClaimView, condition, events, plan


def _claim(ordinal, requested="1Gi", capacity="1Gi", bound=True, conditions=()):
    return ClaimView(f"data-lime-{ordinal}", requested, capacity if bound else None, bound,
                     conditions)  # fmt: skip


def test_raised_size_patches_every_bound_member_claim_below_it():
    claims = [_claim(0), _claim(1), _claim(2, requested="2Gi")]
    p = plan("lime", "2Gi", 3, claims)
    assert p.to_patch == ("data-lime-0", "data-lime-1")


def test_quantities_compare_by_value_not_by_spelling():
    claims = [_claim(0, requested="1024Mi", capacity="1024Mi"), _claim(1, "2G", "2G")]
    p = plan("lime", "1Gi", 2, claims)
    assert p.to_patch == () and p.growing == ()
    assert condition(p)["status"] == "True"
    # 2G (decimal) is less than 2Gi (binary): it must grow.
    assert plan("lime", "2Gi", 2, claims).to_patch == ("data-lime-0", "data-lime-1")


def test_claims_of_removed_nodes_and_foreign_claims_are_left_alone():
    claims = [_claim(0), _claim(3), ClaimView("data-other-0", "1Gi", "1Gi", True)]
    p = plan("lime", "5Gi", 3, claims)
    assert p.to_patch == ("data-lime-0",)


def test_an_unbound_claim_is_not_patched_but_reported_until_bound():
    # A member created later from the old template, before its volume exists.
    p = plan("lime", "2Gi", 2, [_claim(0, "2Gi", "2Gi"), _claim(1, bound=False)])
    assert p.to_patch == ()
    c = condition(p)
    assert (c["status"], c["reason"]) == ("False", "Resizing")
    assert "data-lime-1 requests 1Gi, grows once bound" in c["message"]
    assert "data-lime-0" not in c["message"]


def test_a_patched_claim_is_resizing_until_its_capacity_reaches_the_size():
    pending = _claim(1, "2Gi", "1Gi", conditions=(("FileSystemResizePending", "restart pod"),))
    p = plan("lime", "2Gi", 2, [_claim(0, "2Gi", "2Gi"), pending])
    assert p.to_patch == ()
    c = condition(p)
    assert c["reason"] == "Resizing"
    assert "data-lime-1 1Gi -> requested 2Gi (FileSystemResizePending: restart pod)" in c["message"]
    done = plan("lime", "2Gi", 2, [_claim(0, "2Gi", "2Gi"), _claim(1, "2Gi", "2Gi")])
    assert condition(done) == {
        "type": "VolumesResized",
        "status": "True",
        "reason": "Resized",
        "message": "every member's volume has 2Gi or more",
    }


def test_a_refusal_of_the_api_is_the_condition_with_its_message():
    p = plan("lime", "2Gi", 1, [_claim(0)])
    why = "only dynamically provisioned pvc can be resized"
    c = condition(replace(p, refused={"data-lime-0": why}))
    assert (c["status"], c["reason"]) == ("False", "ResizeRefused")
    assert c["message"] == f"cannot grow to 2Gi: data-lime-0: {why}"


def test_events_only_when_the_condition_changes():
    refused = {"type": "VolumesResized", "status": "False", "reason": "ResizeRefused",
               "message": "cannot grow"}  # fmt: skip
    resized = {"type": "VolumesResized", "status": "True", "reason": "Resized", "message": "ok"}
    resizing = {**refused, "reason": "Resizing", "message": "growing"}
    assert events(None, refused) == [("Warning", "VolumeResizeRefused", "cannot grow")]
    assert events(refused, refused) == []
    assert events(resizing, resized) == [("Normal", "VolumesResized", "ok")]
    assert events(resized, resized) == [] and events(None, resized) == []
    assert events(resized, resizing) == []


def test_the_condition_joins_status_and_keeps_its_transition_time():
    obs = Observed("lime", "db", 1, 1, 1)
    resizing = condition(plan("lime", "2Gi", 1, [_claim(0, "2Gi", "1Gi")]))
    first = build_status(obs, decide(obs), None, "2026-01-01T00:00:00Z", 3, [resizing])
    later = build_status(obs, decide(obs), first, "2026-01-01T00:05:00Z", 3, [resizing])
    got = next(c for c in later["conditions"] if c["type"] == "VolumesResized")
    assert got["reason"] == "Resizing" and got["lastTransitionTime"] == "2026-01-01T00:00:00Z"
