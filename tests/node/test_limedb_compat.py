"""A real `limedb serve` process answers every LimeDB route with the original's shapes and codes,
plus the fixed behaviours (empty key 400, oversized value 413, keys with reserved characters)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from nodeproc import NodeProcess
from support.wait import wait_for

pytestmark = pytest.mark.process

ODD_KEYS = [
    "what?",
    "anchor#frag",
    "100%",
    "%41%42",
    "with space",
    "a/b/c",
    "ключ",
    "键🍋",
    "+plus+",
    "tab\tand;semi=colon&amp",
]


@pytest.fixture(scope="module")
def lime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base: Path = tmp_path_factory.mktemp("compat")
    node = NodeProcess(
        data_dir=base / "data", log_path=base / "node.log", extra_args=["--vnodes", "8"]
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def http(lime: NodeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lime.url, timeout=10.0) as client:
        yield client


def path_of(key: str) -> str:
    return quote(key, safe="")


def test_set_answers_text_ok_and_get_returns_value_with_owner_url(http, lime):
    response = http.post("/api/v1/set", json={"key": "user:1", "value": "alice"})
    assert (response.status_code, response.text) == (200, "OK")
    assert response.headers["content-type"].startswith("text/plain")

    response = http.get("/api/v1/get/user:1")
    assert response.status_code == 200
    body = response.json()
    written_us = body.pop("timestamp_micros")
    assert body == {"value": "alice", "nodeUrl": lime.url}
    assert abs(written_us - time.time_ns() // 1000) < 60_000_000


def test_replicas_of_a_key_on_a_single_node(http, lime):
    http.post("/api/v1/set", json={"key": "where?", "value": "here"})
    entry = {"node_url": lime.url, "is_primary": True, "is_local": True, "answered": True}
    response = http.get(f"/api/v1/replicas/{path_of('where?')}")
    assert response.status_code == 200
    assert response.json() == {
        "key": "where?",
        "replication_factor": 1,
        "quorum": 1,
        "replicas": [{**entry, "has_value": True}],
    }
    missing = http.get("/api/v1/replicas/nowhere").json()
    assert missing["replicas"] == [{**entry, "has_value": False}]
    assert http.get("/api/v1/replicas/").status_code == 400


def test_missing_key_is_404_key_not_found(http):
    response = http.get("/api/v1/get/never-written")
    assert response.status_code == 404
    assert response.json() == {"error": "key not found"}


def test_delete_answers_1_when_the_key_existed_and_0_when_not(http):
    http.post("/api/v1/set", json={"key": "doomed", "value": "x"})
    first = http.delete("/api/v1/del/doomed")
    second = http.delete("/api/v1/del/doomed")
    assert (first.status_code, first.text) == (200, "1")
    assert (second.status_code, second.text) == (200, "0")
    assert http.get("/api/v1/get/doomed").status_code == 404


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_with_reserved_and_non_ascii_characters_round_trip(http, key):
    value = f"value of {key}"
    assert http.post("/api/v1/set", json={"key": key, "value": value}).status_code == 200
    response = http.get(f"/api/v1/get/{path_of(key)}")
    assert response.status_code == 200, response.text
    assert response.json()["value"] == value
    listed = http.get("/api/v1/keys", params={"pageSize": 100}).json()["keys"]
    assert key in {entry["key"] for entry in listed}
    assert http.delete(f"/api/v1/del/{path_of(key)}").text == "1"
    assert http.get(f"/api/v1/get/{path_of(key)}").status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"key": "", "value": "v"}, "empty"),
        ({"value": "v"}, "key"),
        ({"key": "k"}, "value"),
        ({"key": "k", "value": 5}, "value must be a string"),
        ({"key": 5, "value": "v"}, "key must be a string"),
        ({"key": "k" * 1025, "value": "v"}, "1024"),
    ],
)
def test_set_rejects_bad_keys_and_values_with_400_and_a_reason(http, body, fragment):
    response = http.post("/api/v1/set", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_set_with_invalid_json_is_400(http):
    response = http.post("/api/v1/set", content=b"{not json")
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid JSON"}


def test_empty_key_in_the_path_is_400_not_404(http):
    assert http.get("/api/v1/get/").status_code == 400
    assert http.delete("/api/v1/del/").status_code == 400


def test_oversized_value_is_413_and_a_value_at_the_limit_is_accepted(http):
    limit = 1024 * 1024
    too_big = http.post("/api/v1/set", json={"key": "big", "value": "x" * (limit + 1)})
    assert too_big.status_code == 413
    assert str(limit) in too_big.json()["error"]
    at_limit = http.post("/api/v1/set", json={"key": "big", "value": "x" * limit})
    assert at_limit.status_code == 200
    assert len(http.get("/api/v1/get/big").json()["value"]) == limit


def test_unknown_query_parameters_are_ignored(http, lime):
    http.post("/api/v1/set?node=http://elsewhere:8484", json={"key": "q", "value": "1"})
    response = http.get("/api/v1/get/q", params={"node": "http://elsewhere:8484"})
    assert response.json()["nodeUrl"] == lime.url
    assert response.json()["value"] == "1"
    assert http.get("/api/v1/cluster/state", params={"node": "x"}).status_code == 200


def test_keys_pages_are_stable_and_cover_every_local_key_once(http):
    written = {f"page-key-{i:03d}" for i in range(45)}
    for key in written:
        http.post("/api/v1/set", json={"key": key, "value": key.upper()})
    first = http.get("/api/v1/keys", params={"page": 1, "pageSize": 20}).json()
    total = first["total"]
    assert first["page"] == 1 and first["pageSize"] == 20
    assert first["totalPages"] == -(-total // 20)
    seen: list[str] = []
    for page in range(1, first["totalPages"] + 1):
        body = http.get("/api/v1/keys", params={"page": page, "pageSize": 20}).json()
        again = http.get("/api/v1/keys", params={"page": page, "pageSize": 20}).json()
        assert body["keys"] == again["keys"]
        for entry in body["keys"]:
            assert set(entry) == {"key", "value", "size"}
            assert entry["size"] == len(entry["value"].encode())
        seen += [entry["key"] for entry in body["keys"]]
    assert len(seen) == len(set(seen)) == total
    assert written <= set(seen)


def test_keys_page_size_is_capped_at_100(http):
    body = http.get("/api/v1/keys", params={"pageSize": 500}).json()
    assert body["pageSize"] == 100
    assert len(body["keys"]) <= 100


def test_cluster_state_lists_self_as_the_only_active_peer(http, lime):
    body = http.get("/api/v1/cluster/state").json()
    assert body["nodeUrl"] == lime.url
    assert body["peers"] == [lime.url]
    assert body["totalNodes"] == 1
    assert body["status"] == "active"
    assert body["ringEpoch"] >= 1
    assert body["members"][0]["state"] == "Normal"


def test_cluster_ring_has_limedb_shape_and_degrees_within_0_to_360(http, lime):
    body = http.get("/api/v1/cluster/ring").json()
    assert body["totalNodes"] == 1
    assert body["virtualNodesPerNode"] == 8
    assert body["virtualNodes"] == 8
    assert body["virtualNodeDistribution"] == {lime.url: 8}
    assert body["currentNode"] == lime.url
    assert body["allNodes"] == [lime.url]
    ranges = body["ranges"][lime.url]
    assert len(ranges) == 8
    assert set(ranges[0]) == {"start", "end", "hash", "size"}
    assert sum(r["size"] for r in ranges) == 1 << 64
    for entry in body["rangesDegrees"][lime.url]:
        assert set(entry) == {
            "startHash", "endHash", "hash", "startDegrees", "endDegrees", "sizeDegrees", "sizeHash"
        }  # fmt: skip
        for field in ("startDegrees", "endDegrees", "sizeDegrees"):
            assert 0 <= entry[field] <= 360


def test_gossip_of_a_node_without_peers_is_the_standalone_shape(http, lime):
    body = http.get("/api/v1/cluster/gossip").json()
    assert body["status"] == "standalone"
    assert body["total_peers"] == 0
    assert body["cluster_health"] == "N/A"
    assert isinstance(body["node_heartbeat"], int)
    assert body["node_url"] == lime.url


def test_health_reports_service_version_and_storage(http, lime):
    body = http.get("/api/v1/health").json()
    assert body["status"] == "healthy"
    assert body["service"] == "limedb-node"
    assert body["nodeUrl"] == lime.url
    assert isinstance(body["version"], str) and isinstance(body["timestamp"], int)
    assert isinstance(body["storage"], dict)


def test_wrong_method_is_405_listing_the_allowed_methods(http):
    response = http.post("/api/v1/get/x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert "error" in response.json()
    assert http.request("PATCH", "/v1/kv/x").headers["allow"] == "GET, PUT, DELETE"


def test_unknown_route_is_a_json_404(http):
    response = http.get("/api/v2/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_native_kv_round_trips_raw_bytes_with_version_header(http):
    value = bytes(range(256))
    put = http.put("/v1/kv/bin%2Fary", content=value)
    assert put.status_code == 200
    ts = put.json()["ts"]
    got = http.get("/v1/kv/bin%2Fary")
    assert got.status_code == 200
    assert got.content == value
    assert got.headers["content-type"] == "application/octet-stream"
    assert int(got.headers["x-limedb-timestamp"]) == ts
    assert http.delete("/v1/kv/bin%2Fary").json() == {"deleted": True}
    missing = http.get("/v1/kv/bin%2Fary")
    assert missing.status_code == 404 and missing.json() == {"error": "key not found"}


def test_native_put_with_ttl_expires(http):
    assert http.put("/v1/kv/short-lived", params={"ttl": "0.2"}, content=b"x").status_code == 200
    assert http.get("/v1/kv/short-lived").status_code == 200
    wait_for(lambda: http.get("/v1/kv/short-lived").status_code == 404, 5.0, "ttl expiry")


@pytest.mark.parametrize("query", ["ttl=-1", "ttl=abc", "ttl=0", "consistency=most"])
def test_native_put_rejects_bad_query_values(http, query):
    response = http.put(f"/v1/kv/k?{query}", content=b"x")
    assert response.status_code == 400
    assert "error" in response.json()


def test_native_oversized_value_is_413(http):
    response = http.put("/v1/kv/huge", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413


def test_batch_writes_then_reads_many_keys(http):
    body = {
        "put": [{"key": "b1", "value": "one"}, {"key": "b2", "value": "two", "ttl": 60}],
        "get": ["b1", "b2", "b-missing"],
    }
    response = http.post("/v1/batch", json=body)
    assert response.status_code == 200
    assert response.json() == {
        "values": {"b1": "one", "b2": "two", "b-missing": None},
        "written": 2,
    }


def test_probes_and_metrics(http):
    assert http.get("/livez").json() == {"status": "alive"}
    assert http.get("/readyz").json() == {"status": "ready"}
    http.post("/api/v1/set", json={"key": "metered", "value": "1"})
    http.get("/api/v1/get/metered")
    metrics = http.get("/metrics").text
    assert (
        'limedb_http_requests_total{method="GET",route="/api/v1/get/{key}",status="200"}' in metrics
    )
    assert "limedb_http_request_duration_seconds_bucket" in metrics
    assert "limedb_ready 1.0" in metrics
    assert "limedb_storage_memtable_bytes" in metrics
    assert "limedb_storage_levels_0_files" in metrics


def test_openapi_documents_every_route(http):
    paths = http.get("/openapi.json").json()["paths"]
    for path in [
        "/api/v1/set",
        "/api/v1/get/{key}",
        "/api/v1/del/{key}",
        "/api/v1/keys",
        "/api/v1/cluster/state",
        "/api/v1/cluster/ring",
        "/api/v1/cluster/gossip",
        "/api/v1/health",
        "/v1/kv/{key}",
        "/v1/batch",
        "/livez",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    assert http.get("/docs").status_code == 200
