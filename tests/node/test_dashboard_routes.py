"""The dashboard's page and JSON routes on a real node: the page is served without the secret
(it holds no data) under a strict Content-Security-Policy; the numbers it reads are behind the
cluster secret, count client requests only, and say how much the node stores."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.process


def test_page_and_assets_are_served_with_a_strict_policy(node):
    page = httpx.get(f"{node.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/ui/assets/dashboard.js" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    script = httpx.get(f"{node.url}/ui/assets/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "X-Cluster-Secret" in script.text and "Authorization" in script.text
    missing = httpx.get(f"{node.url}/ui/assets/secret.txt")
    assert missing.status_code == 404 and "error" in missing.json()


def test_stats_need_the_secret_and_count_client_requests(node):
    secret = (node.data_dir / "cluster-secret").read_text().strip()
    for path in ("/admin/stats", "/admin/cluster-stats"):
        refused = httpx.get(f"{node.url}{path}")
        assert refused.status_code == 401 and "secret" in refused.json()["error"]
        wrong = httpx.get(f"{node.url}{path}", headers={"x-cluster-secret": "nope"})
        assert wrong.status_code == 401
    headers = {"x-cluster-secret": secret}
    before = httpx.get(f"{node.url}/admin/stats", headers=headers).json()
    for i in range(20):
        assert httpx.put(f"{node.url}/v1/kv/k{i}", content=b"v" * 1000).status_code < 300
    assert httpx.get(f"{node.url}/v1/kv/absent").status_code == 404
    after = httpx.get(f"{node.url}/admin/stats", headers=headers).json()
    # 21 client requests; the stats requests themselves are not client traffic.
    assert after["requests"]["total"] - before["requests"]["total"] == 21
    assert after["requests"]["by_class"]["4xx"] - before["requests"]["by_class"]["4xx"] == 1
    latency = after["requests"]["latency"]
    assert len(latency["counts"]) == len(latency["bounds_s"]) + 1
    assert sum(latency["counts"]) == after["requests"]["total"]
    assert after["storage"]["bytes"] >= 20 * 1000
    assert 0 < after["disk"]["used_fraction"] < 1
    assert after["hints"]["pending"] == 0 and after["repair"] is None
    assert after["verification"] is None  # a lone node has no replicas to verify
    cluster = httpx.get(f"{node.url}/admin/cluster-stats", headers=headers).json()
    (only,) = cluster["nodes"]
    assert only["reachable"] and only["url"] == node.url
    assert only["stats"]["storage"]["bytes"] >= 20 * 1000
