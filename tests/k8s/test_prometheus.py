"""The monitoring kit against a real Prometheus (Debian's 2.42, tests/support/prometheus.py).

The other monitoring tests check that the kit renders, parses and is accepted by the API server;
none ran it. Here Prometheus scrapes three real nodes as the chart's ServiceMonitor does (job
`limedb`, the namespace, limecluster and pod labels it gives every series), parses every
node's exposition, loads the chart's alert rules as helm renders them and evaluates each one
without an error; with one node killed, the alerts meant for it (LimeDBNodeDown,
LimeDBNodeNotScraped, LimeDBQuorumAtRisk) match the series the nodes really export and go
pending, naming that node, and no other alert does. Not under the k8s marker: no Kubernetes is
needed (helm only renders), and it runs in the suite's first lane.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helm import template
from support.history import History
from support.prometheus import Prometheus, Target, start_prometheus
from support.transitions import Fleet, preload
from support.wait import wait_for

pytestmark = pytest.mark.cluster

ENV = {"LIMEDB_VNODES": "16", "LIMEDB_REPLICATION_FACTOR": "3"}
NAMESPACE, CLUSTER = "shop", "orders"
NEVER = "0001-01-01T00:00:00Z"  # a rule's lastEvaluation before its first evaluation
KILLED_ALERTS = {"LimeDBNodeDown", "LimeDBNodeNotScraped", "LimeDBQuorumAtRisk"}


def chart_rule_groups() -> list[dict]:
    docs = template(NAMESPACE, "monitoring.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def rules(prometheus: Prometheus) -> list[dict]:
    return [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]


def alerts(prometheus: Prometheus) -> list[dict]:
    return prometheus.api("alerts")["alerts"]


def test_prometheus_scrapes_the_nodes_and_the_charts_alerts_fire_for_a_killed_node(
    tmp_path: Path,
):
    groups = chart_rule_groups()
    names = {r["alert"] for g in groups for r in g["rules"]}
    fleet = Fleet(tmp_path / "nodes", ENV, first_host=240)
    prometheus = None
    try:
        nodes = fleet.bootstrap(3)
        preload(fleet, History(), 200)
        pods = {node.url: f"{CLUSTER}-{node.index}" for node in nodes}
        targets = [
            Target(
                node.url.removeprefix("http://"),
                {"namespace": NAMESPACE, "limecluster": CLUSTER, "pod": pods[node.url]},
            )
            for node in nodes
        ]
        prometheus = start_prometheus(tmp_path / "prometheus", "limedb", targets, groups)
        # promtool, shipped with it, accepts the rule file as Prometheus loaded it.
        check = subprocess.run(
            ["promtool", "check", "rules", str(prometheus.directory / "rules.yml")],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr

        def scraped() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_for(
            scraped,
            30.0,
            lambda: f"every node scraped: {prometheus.api('targets')['activeTargets']}",
            0.2,
        )
        members = prometheus.query('limedb_ring_members{job="limedb"}')
        assert sorted(m["metric"]["pod"] for m in members) == sorted(pods.values())
        assert all(m["value"][1] == "3" and m["metric"]["limecluster"] == CLUSTER for m in members)

        def evaluated() -> list[dict]:
            loaded = rules(prometheus)
            assert {r["name"] for r in loaded} == names
            return loaded if all(r["lastEvaluation"] != NEVER for r in loaded) else []

        loaded = wait_for(evaluated, 30.0, "every rule evaluated once", 0.2)
        assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []
        assert alerts(prometheus) == []  # a healthy cluster raises nothing

        killed = nodes[2]
        killed.kill()

        def raised() -> dict[str, dict]:
            active = {a["labels"]["alertname"]: a for a in alerts(prometheus)}
            return active if set(active) >= KILLED_ALERTS else {}

        active = wait_for(
            raised,
            60.0,
            lambda: f"{KILLED_ALERTS} raised; now {alerts(prometheus)}",
            0.5,
        )
        assert set(active) == KILLED_ALERTS, active
        assert active["LimeDBNodeDown"]["labels"]["member"] == killed.url
        assert active["LimeDBNodeNotScraped"]["labels"]["pod"] == pods[killed.url]
        assert active["LimeDBQuorumAtRisk"]["labels"]["limecluster"] == CLUSTER
        assert all(a["state"] in ("pending", "firing") for a in active.values())
        unhealthy = [(r["name"], r.get("lastError")) for r in rules(prometheus)]
        assert [u for u in unhealthy if u[1]] == []
    finally:
        if prometheus is not None:
            prometheus.stop()
        fleet.stop()
