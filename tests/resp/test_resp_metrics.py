"""RESP commands appear in /metrics by command: how many ran, how many were answered with an
error, and their latency histogram (what the monitoring kit's RESP panels read)."""

from __future__ import annotations

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support.cluster import SECRET_HEADERS

pytestmark = pytest.mark.redis


def samples(url: str, client) -> dict[tuple[str, tuple], float]:
    text = client.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_resp_commands_are_counted_with_errors_and_latency(limedb_three):
    cluster, endpoints = limedb_three
    url = cluster.nodes[0].url
    before = samples(url, cluster.client)
    r = endpoints[0].client()
    for i in range(5):
        r.set(f"metrics:{i}", "text")
    assert r.get("metrics:0") == b"text"
    with pytest.raises(redis.ResponseError):
        r.incr("metrics:0")  # not an integer: INCRBY metrics:0 1 answers an error
    after = samples(url, cluster.client)

    def grew(name: str, command: str, extra: tuple = ()) -> float:
        key = (name, tuple(sorted((("command", command), *extra))))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("limedb_resp_commands_total", "set") == 5
    assert grew("limedb_resp_commands_total", "get") == 1
    assert grew("limedb_resp_command_errors_total", "incrby") == 1  # redis-py's incr()
    assert grew("limedb_resp_command_errors_total", "set") == 0
    assert grew("limedb_resp_command_duration_seconds_count", "set") == 5
    assert grew("limedb_resp_command_duration_seconds_bucket", "set", (("le", "+Inf"),)) == 5
    assert grew("limedb_resp_command_duration_seconds_sum", "set") > 0
    # The dashboard's numbers (/admin/stats) count them too.
    resp = cluster.client.get(f"{url}/admin/stats", headers=SECRET_HEADERS).json()["resp"]
    assert resp["total"] >= 7 and resp["errors"] >= 1
    assert sum(resp["latency"]["counts"]) == resp["total"]
