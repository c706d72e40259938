"""The acceptance scale: 100,000 keys move to a joining node and back when it leaves, under a
mixed client load; afterwards every key reads its value and sits on exactly its RF owners."""

from __future__ import annotations

from pathlib import Path

import pytest
from limedb.client import Client
from support.cluster import Workload
from support.history import History
from support.transitions import Fleet

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KEYS = 100_000
BATCH = 1000


def bulk_load(fleet: Fleet) -> dict[str, bytes]:
    values = {f"bulk{i:06d}": b"%06d-" % i + b"x" * 94 for i in range(KEYS)}
    names = sorted(values)
    with Client(fleet.members[0].url, timeout=60.0) as client:
        for first in range(0, KEYS, BATCH):
            client.batch(put={k: values[k] for k in names[first : first + BATCH]})
    return values


def check(fleet: Fleet, values: dict[str, bytes], history: History) -> None:
    fleet.wait_converged()
    names = sorted(values)
    wrong = []
    with Client(fleet.members[-1].url, timeout=60.0) as client:
        for first in range(0, KEYS, BATCH):
            got = client.batch(get=names[first : first + BATCH])
            wrong += [k for k, v in got.items() if v != values[k]]
    assert not wrong, f"{len(wrong)} keys lost or wrong, e.g. {wrong[:5]}"
    workload_values = {key: fleet.read(key) for key in sorted(history.keys())}
    problems = history.check_final(workload_values.__getitem__)
    assert not problems, problems[:5]
    live = set(values) | {k for k, v in workload_values.items() if v is not None}
    misplaced = fleet.placement_problems(live, live | set(workload_values))
    assert not misplaced, f"{len(misplaced)} keys misplaced, e.g. {misplaced[:5]}"


def test_100k_keys_move_to_a_joining_node_and_back_when_it_leaves(tmp_path: Path):
    fleet = Fleet(tmp_path, {"LIMEDB_VNODES": "64", "LIMEDB_CLEANUP_GRACE_MS": "300"}, 170)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        values = bulk_load(fleet)
        d = fleet.start_joiner()
        workload = Workload(history, [a.url, b.url, c.url], keys=150, threads=3)
        workload.start()
        try:
            joined = fleet.join(d)
        finally:
            workload.stop()
        # With RF=3 a fourth node becomes a replica of about three quarters of the keys.
        assert joined["keys_streamed"] >= 0.6 * KEYS
        check(fleet, values, history)

        workload = Workload(history, [a.url, b.url, c.url], keys=150, threads=3)
        workload.start()
        try:
            left = fleet.leave(d)
        finally:
            workload.stop()
        assert left["keys_streamed"] >= 0.6 * KEYS
        check(fleet, values, history)
    finally:
        fleet.stop()
