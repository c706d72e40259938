"""Acknowledged writes survive the node process being killed (kill -9) or stopped (SIGTERM)."""

from __future__ import annotations

import time

import httpx
import pytest
from nodeproc import WriteLoad, missing_writes

pytestmark = pytest.mark.process


def test_acknowledged_writes_survive_kill_9_during_write_load(node_factory):
    node = node_factory("--durability", "sync").start()
    load = WriteLoad(node.url).start()
    load.wait_for_acks(500)
    node.kill9()
    acked = load.stop()
    assert len(acked) >= 500

    node.start()
    assert missing_writes(node.url, acked) == []


def test_sigterm_under_write_load_exits_0_within_10s_and_loses_no_acknowledged_write(
    node_factory,
):
    node = node_factory("--durability", "sync").start()
    load = WriteLoad(node.url).start()
    load.wait_for_acks(500)
    started = time.monotonic()
    code = node.terminate(timeout_s=10.0)
    elapsed = time.monotonic() - started
    acked = load.stop()
    assert code == 0, node.log()
    assert elapsed < 10.0

    node.start()
    assert missing_writes(node.url, acked) == []


def test_restart_keeps_values_and_deletes(node_factory):
    node = node_factory("--durability", "sync").start()

    with httpx.Client(base_url=node.url) as client:
        client.post("/api/v1/set", json={"key": "kept", "value": "1"})
        client.post("/api/v1/set", json={"key": "gone", "value": "2"})
        client.delete("/api/v1/del/gone")
    assert node.terminate() == 0
    node.start()
    with httpx.Client(base_url=node.url) as client:
        assert client.get("/api/v1/get/kept").json()["value"] == "1"
        assert client.get("/api/v1/get/gone").status_code == 404
