"""The verifier on real node processes: after every step of 3 -> 5 -> 3 the cluster records a
verification of that step's epoch with result ok, on every member; a replica damaged on
purpose before a leave (versions removed from its engine directly, so no newer write hides
the damage) is found, repaired and reported with the number of keys repaired; `limedb admin
verify --json` exits 0 when every replica agrees, 1 after repairing, 2 with a replica down;
the record survives a restart and shows in /metrics and /admin/cluster-stats."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from limedb.cluster.keys import storage_key
from limedb.storage import Engine
from support.cluster import Node, wait_for
from support.history import History
from support.transitions import Fleet, preload

pytestmark = pytest.mark.cluster

ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    "LIMEDB_REPLICATION_FACTOR": "3",
    "LIMEDB_REPAIR_INTERVAL_S": "0",  # only the verifier repairs here
}
LIMEDB = str(Path(sys.executable).with_name("limedb"))
KEYS = 400
DAMAGED = 12


def verification(fleet: Fleet, node: Node) -> dict | None:
    return fleet.http.get(f"{node.url}/admin/verification").json()["last"]


def wait_verified(fleet: Fleet, epoch: int) -> dict:
    """The verification of `epoch`, once every member holds it (the runner pushes it)."""

    def everywhere() -> dict | None:
        seen = [verification(fleet, node) for node in fleet.members]
        if all(v is not None and v["epoch"] == epoch for v in seen):
            return seen[0]
        return None

    return wait_for(everywhere, 60.0, f"the verification of epoch {epoch} on every member", 0.2)


def damage(fleet: Fleet, *node_keys: tuple[Node, list[str]]) -> None:
    """Remove every version of the keys from each node's engine, the nodes stopped meanwhile."""
    for node, keys in node_keys:
        node.stop()
        engine = Engine.open(node.data_dir / "data")
        try:
            for key in keys:
                skey = storage_key(key.encode())
                engine.purge_range(skey, skey + b"\x00")
        finally:
            engine.close()
    for node, _ in node_keys:
        node.start()
    for node, _ in node_keys:
        fleet.wait_ready(node)


def holds(fleet: Fleet, node: Node, key: str) -> bool:
    """Whether `node` itself holds `key`: at consistency one a replica answers locally."""
    r = fleet.http.get(f"{node.url}/v1/kv/{key}", params={"consistency": "one"})
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def admin_verify(fleet: Fleet, node: Node, *args: str) -> tuple[int, dict]:
    out = subprocess.run(
        [LIMEDB, "admin", "verify", "--json", "--url", node.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LIMEDB_CLUSTER_SECRET": fleet.secret},
    )
    assert out.stdout, out.stderr
    return out.returncode, orjson.loads(out.stdout)


def metric_values(fleet: Fleet, node: Node) -> dict[str, float]:
    text = fleet.http.get(f"{node.url}/metrics").text
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("limedb_verif"))
    return {name: float(value) for name, value in samples}


def test_every_scaling_step_is_verified_and_damage_is_repaired(fleet: Fleet):
    history = History()
    a, b, c = fleet.bootstrap(3)
    keys = preload(fleet, history, KEYS, value_bytes=20)

    d, e = fleet.start_joiner(), fleet.start_joiner()
    steps = [lambda: fleet.join(d), lambda: fleet.join(e), lambda: fleet.leave(d)]
    for epoch, step in enumerate(steps, start=2):
        step()
        v = wait_verified(fleet, epoch)
        assert v["result"] == "ok", v
        assert v["trigger"] == "transition" and v["rangesChecked"] == v["rangesTotal"] > 0
        assert (v["rangesRepaired"], v["keysRepaired"]) == (0, 0)

    # Before e leaves: b loses keys it keeps replicating after the leave, in ranges the leave
    # moves (e replicates them now), so the verification of that step covers them; c loses
    # keys of ranges the leave does not move (e does not replicate them), left for later.
    ring, rf = fleet.ring()
    after = ring.without_member(e.url)
    moved = [
        k
        for k in keys
        if {e.url, b.url} <= set(ring.replicas(k, rf)) and b.url in after.replicas(k, rf)
    ][:DAMAGED]
    unmoved = [k for k in keys if e.url not in ring.replicas(k, rf)]
    kept = [k for k in unmoved if c.url in ring.replicas(k, rf)][:5]
    assert (len(moved), len(kept)) == (DAMAGED, 5)
    record = verification(fleet, c)
    damage(fleet, (b, moved), (c, kept))
    assert verification(fleet, c) == record  # the record survives a restart
    assert not any(holds(fleet, b, k) for k in moved)  # the test can fail
    assert not any(holds(fleet, c, k) for k in kept)

    fleet.leave(e)
    v = wait_verified(fleet, 5)
    assert v["result"] == "repaired", v
    assert v["keysRepaired"] == DAMAGED and v["rangesRepaired"] >= 1, v
    assert all(holds(fleet, b, k) for k in moved)
    driver = next(n for n in fleet.members if n.url == v["node"])
    assert "replicas differed" in (driver.data_dir / "node.log").read_text()

    # On demand, every range of the ring: c's damage is found and repaired (1), then nothing
    # differs (0).
    before = metric_values(fleet, a)
    code, v = admin_verify(fleet, a)
    assert (code, v["result"], v["epoch"], v["keysRepaired"]) == (1, "repaired", 5, 5), v
    assert v["rangesChecked"] == v["rangesTotal"] > 0
    assert all(holds(fleet, c, k) for k in kept)
    code, v = admin_verify(fleet, c)
    assert (code, v["result"], v["keysRepaired"]) == (0, "ok", 0), v
    v = fleet.http.post(f"{a.url}/admin/verify", json={"epoch": 5}, timeout=60).json()
    assert (v["result"], v["transition"] is not None) == ("ok", True), v
    code, v = admin_verify(fleet, a, "--epoch", "3")  # only the last transition is known
    assert (code, v["result"]) == (2, "failed") and "epoch 3" in v["error"], v

    now = metric_values(fleet, a)
    repaired_runs = 'limedb_verifications_total{result="repaired"}'
    assert now[repaired_runs] == before.get(repaired_runs, 0) + 1
    keys_repaired = "limedb_verification_keys_repaired_total"
    assert now[keys_repaired] == before[keys_repaired] + 5
    stats = fleet.http.get(f"{a.url}/admin/cluster-stats").json()
    newest = max(verification(fleet, n)["finishedMs"] for n in fleet.members)
    assert stats["verification"]["finishedMs"] == newest

    # A replica down: it cannot be checked (2), and says which.
    c.stop()
    code, v = admin_verify(fleet, a)
    assert (code, v["result"]) == (2, "failed"), v
    assert v["replicasUnreachable"] == [c.url]
