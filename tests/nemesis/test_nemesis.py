"""The nemesis in CI: a few fixed seeds, each a short campaign whose plan holds every fault
kind (kill -9, pause, partitions one-way and flapping, packet loss, clock steps, jumps and
drift, a full disk, a file-descriptor limit, join, leave and RF change), judged by
nemesis_campaign. A failing seed's assertion message starts with the command that replays it.
"""

from __future__ import annotations

import pytest
from nemesis_campaign import run
from nemesis_checks import ttl_problems
from nemesis_faults import Skew
from nemesis_plan import KINDS, MEMBERSHIP, plan
from nemesis_workload import TtlWrite
from support import diskfull
from support.history import OK, READ, UNKNOWN, WRITE, History

# Seeds found failing stay here as regression tests, with the bug they found:
# 1: a node stepped 30 s ahead kept stamping writes on clock samples taken before the step
#    (cluster/clock_offset.py now corrects them for the node's own steps at once).
# 3: an fd_limit fault during a flush failed the storage engine for good (EMFILE), so the
#    leaving node never handed off and the leave never ended (storage/errors.py: EMFILE and
#    ENFILE are now handled like a full disk).
# Longer seeds that found bugs, kept by a focused test (too long for CI):
# 7 (MINUTES=4): a node restarted after kill -9 onto a full disk died in its start-up pull of
#    the ring record (tests/unit/cluster/test_ring_record_disk_full.py).
# 1720 (MINUTES=10): a node restarted after kill -9 and then given a low open-file limit while
#    it recovered failed to map its tables (EMFILE) and exited for good; every later ring
#    change rolled back for the dead member (limedb/server.py now tries again each second;
#    tests/node/test_limits.py::test_storage_that_needs_more_descriptors_than_the_limit_...).
# CI runs the two seeds that found bugs (each plan holds every fault kind and ring change);
# other seeds run with `make nemesis SEED=N MINUTES=M`, as seed 2 did in CI until the suite
# outgrew its 25-minute budget.
CI_SEEDS = (1, 3)
CI_MINUTES = 0.5  # one bag of faults: every kind once, about a minute


def test_every_ci_seed_covers_every_fault_kind_and_ring_change():
    for seed in CI_SEEDS:
        the_plan = plan(seed, CI_MINUTES)
        assert the_plan.kinds() == set(KINDS), seed
        assert set(MEMBERSHIP) <= the_plan.kinds()


def test_a_seed_replays_its_plan_exactly_and_other_seeds_differ():
    assert plan(7, 3) == plan(7, 3)
    assert plan(7, 3).describe() != plan(8, 3).describe()
    long = plan(7, 3)
    assert long.duration_s >= 3 * 60 - 10
    # Longer campaigns repeat whole bags, so each kind keeps coming back.
    assert min(sum(s.kind == k for s in long.steps) for k in KINDS) >= 2


@pytest.mark.nemesis
@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("seed", CI_SEEDS)
def test_campaign(seed, netlab, tmp_path):
    diskfull.sweep()  # small disks a crashed run left behind
    result = run(seed, CI_MINUTES, tmp_path, netlab)
    print(result.report())
    assert not result.problems, result.report()


def _ttl_history(write_outcome: str = OK) -> History:
    history = History()
    write = history.begin(WRITE, "t0-1", b"v")
    write.start, write.end, write.outcome = 10.0, 10.5, write_outcome
    return history


def _read(history: History, at: float, value: bytes | None) -> None:
    op = history.begin(READ, "t0-1")
    op.start, op.end, op.outcome, op.value = at, at + 0.1, OK, value


def test_ttl_check_flags_a_key_served_long_after_expiry_or_gone_long_before():
    ttl = [TtlWrite("t0-1", 8.0)]
    history = _ttl_history()
    _read(history, 12.0, b"v")  # alive while it should be
    _read(history, 30.0, None)  # expired, as it should be
    assert ttl_problems(history, ttl, [], {"t0-1": None}, (40.0, 41.0)) == []
    _read(history, 25.0, b"v")  # 6.5 s after the expiry
    _read(history, 12.0, None)  # 6 s before it
    problems = ttl_problems(history, ttl, [], {"t0-1": b"v"}, (40.0, 41.0))
    assert len(problems) == 3, problems
    assert "still served" in problems[0] and "gone" in problems[1] and "final" in problems[2]


def test_ttl_check_widens_its_bounds_by_the_clock_offsets_in_force():
    ttl = [TtlWrite("t0-1", 8.0)]
    history = _ttl_history()
    _read(history, 25.0, b"v")
    assert len(ttl_problems(history, ttl, [], {}, (40.0, 41.0))) == 1
    assert ttl_problems(history, ttl, [Skew(20.0, 22.0, 30.0)], {}, (40.0, 41.0)) == []
    assert len(ttl_problems(history, ttl, [Skew(1.0, 2.0, 30.0)], {}, (40.0, 41.0))) == 1


def test_ttl_check_never_expects_an_unacknowledged_write_to_be_present():
    history = _ttl_history(UNKNOWN)
    _read(history, 12.0, None)
    assert ttl_problems(history, [TtlWrite("t0-1", 8.0)], [], {}, (40.0, 41.0)) == []


def test_every_step_names_a_node_the_plan_expects_to_be_a_member():
    for seed in (*CI_SEEDS, 7):
        members, joined = {0, 1, 2}, 3
        for step in plan(seed, 4).steps:
            node = step.params.get("node")
            if step.kind == "join":
                assert node == joined and node not in members
                members.add(node)
                joined += 1
            elif step.kind == "rf":
                assert node is None
            else:
                assert node in members, (seed, step.describe())
                if step.kind == "leave":
                    members.remove(node)
                elif step.kind.startswith("clock"):
                    assert node % 2 == 1  # only odd nodes run on a fake clock
