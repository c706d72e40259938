"""Ring transitions under load at the acceptance scale: a cluster holding 100,000 keys goes
3 -> 5 -> 3 -> 1 -> 3 nodes while clients write, delete and read, and after every step no
acknowledged write is lost, deleted keys stay deleted and each key is stored on exactly its RF
owners (every node lists its own keys). The last step brings back two nodes that left, on their
old disks: nothing deleted or overwritten while they were away comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Workload, wait_for
from support.history import History
from support.transitions import Fleet, preload

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    "LIMEDB_REPLICATION_FACTOR": "3",
}
PRELOADED_KEYS = 100_000


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, ENV)
    try:
        yield fleet
    finally:
        fleet.stop()


class Load:
    """A workload over the given nodes for the duration of a `with` block."""

    def __init__(self, history: History, fleet: Fleet, nodes) -> None:
        self.workload = Workload(history, [n.url for n in nodes], keys=150, threads=3)

    def __enter__(self) -> Workload:
        self.workload.start()
        return self.workload

    def __exit__(self, *exc: object) -> None:
        self.workload.stop()


def test_scale_3_to_5_to_3_to_1_to_3_under_load_keeps_every_acknowledged_write(fleet: Fleet):
    history = History()
    a, b, c = fleet.bootstrap(3)
    preloaded = preload(fleet, history, PRELOADED_KEYS)
    fleet.check(history)

    # 3 -> 5: two joins, one at a time, while clients use the original three. A joining node
    # starts empty, so every preloaded key it then owns must have been streamed to it.
    d, e = fleet.start_joiner(), fleet.start_joiner()
    with Load(history, fleet, [a, b, c]) as load:
        first = fleet.join(d)
        d_owns = fleet.owned_by(d, preloaded)
        second = fleet.join(e)
        e_owns = fleet.owned_by(e, preloaded)
    assert first["keys_streamed"] >= d_owns > 0
    assert second["keys_streamed"] >= e_owns > 0
    assert load.acknowledged() > 0
    fleet.wait_converged()
    assert fleet.status()["epoch"] == 3
    fleet.check(history)

    # 5 -> 3: the two new nodes hand their ranges back; every preloaded key a leaving node
    # owned gets a new owner, which receives it by streaming.
    with Load(history, fleet, [a, b, c]):
        d_owns = fleet.owned_by(d, preloaded)
        first = fleet.leave(d)
        e_owns = fleet.owned_by(e, preloaded)
        second = fleet.leave(e)
    assert first["keys_streamed"] >= d_owns > 0
    assert second["keys_streamed"] >= e_owns > 0
    fleet.wait_converged()
    fleet.check(history)
    wait_for(
        lambda: e.url not in fleet.http.get(f"{a.url}/api/v1/cluster/state").json()["peers"],
        15.0,
        "the node that left to be no longer listed",
    )

    # 3 -> 1: lower RF first (a leave below RF is refused), then two leaves; the nodes that
    # left are stopped, their disks kept.
    with Load(history, fleet, [a]):
        fleet.set_rf(1)
        fleet.leave(b, via=a)
        fleet.leave(c, via=a)
    b.stop()
    c.stop()
    fleet.wait_converged()
    status = fleet.status(a)
    assert [m["node_id"] for m in status["members"] if m["state"] == "Normal"] == [a.url]
    assert status["replication_factor"] == 1
    fleet.check(history)

    # 1 -> 3: b and c come back on the disks they left with (what was deleted or overwritten
    # since must not come back), join again, and RF goes back to 3.
    with Load(history, fleet, [a]):
        for node in (b, c):
            node.start()
            fleet.wait_ready(node)
        fleet.join(b)
        fleet.join(c)
        fleet.set_rf(3)
    fleet.wait_converged()
    assert fleet.status(c)["replication_factor"] == 3
    fleet.check(history)
    assert not history.check_reads(), history.check_reads()[:5]
