"""One node's own numbers for the dashboard (`GET /admin/stats`): client requests and their
latency buckets, storage and disk size, hints, clock offset, overload refusals, repair and verification.

Counters are totals since the node started; the dashboard turns two readings into a rate and
the difference of two bucket readings into the latency percentiles of that interval.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from limedb.api.metrics import BUCKETS, RouteStats
from limedb.api.state import NodeState

# Routes that are not client traffic: the dashboard's own polling, probes, scrapes and admin.
OPERATIONAL_PREFIXES = ("/admin", "/ui", "/metrics", "/livez", "/readyz", "/api/v1/cluster")
OPERATIONAL_ROUTES = frozenset({"/docs", "/openapi.json", "/redoc", "unmatched"})


def is_client_route(route: str) -> bool:
    return route not in OPERATIONAL_ROUTES and not route.startswith(OPERATIONAL_PREFIXES)


def client_requests(stats: RouteStats) -> dict[str, Any]:
    """Requests of the client routes (HTTP): count, by status class, latency buckets."""
    counts = [0] * (len(BUCKETS) + 1)
    classes = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    total, seconds = 0, 0.0
    for (_, route), hist in stats.routes():
        if not is_client_route(route):
            continue
        for i, count in enumerate(hist.counts):
            counts[i] += count
        seconds += hist.sum
        for status, count in hist.statuses.items():
            total += count
            label = f"{status // 100}xx"
            if label in classes:
                classes[label] += count
    return {
        "total": total,
        "by_class": classes,
        "latency": {"bounds_s": list(BUCKETS), "counts": counts, "sum_s": round(seconds, 6)},
    }


def storage_bytes(stats: dict) -> int:
    """Bytes in the node's tables and memtables."""
    tables = sum(int(level.get("bytes", 0)) for level in stats.get("levels") or ())
    memory = int(stats.get("memtable_bytes", 0)) + int(stats.get("immutable_memtable_bytes", 0))
    return tables + memory


def disk_usage(path: str) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return {"error": str(exc)}
    return {
        "total_bytes": usage.total,
        "used_bytes": usage.used,
        "free_bytes": usage.free,
        "used_fraction": round(usage.used / usage.total, 4) if usage.total else 0.0,
    }


def node_stats(state: NodeState) -> dict[str, Any]:
    service = state.require_service()
    stats = service.stats()
    cluster = stats.get("cluster") or {}
    hints = cluster.get("hints") or {}
    clock = stats.get("clock") or {}
    status = service.admin_status()
    admission = state.admission
    return {
        "node_id": service.node_id,
        "url": service.node_url,
        "time_ms": time.time_ns() // 1_000_000,
        "requests": client_requests(state.stats),
        # RESP commands (None when the node runs no RESP listener).
        "resp": state.resp_totals() if state.resp_totals is not None else None,
        "inflight": admission.running,
        "overload": {"refused": admission.rejected, "queued": admission.queued},
        "storage": {
            "bytes": storage_bytes(stats),
            "keys_approx": int(stats.get("keys_approx", 0)),
            "disk_full": bool(stats.get("disk_full", False)),
            "out_of_descriptors": bool(stats.get("out_of_descriptors", False)),
        },
        "disk": disk_usage(state.config.data_dir),
        "hints": {
            "pending": int(hints.get("pending", 0)),
            "stored": int(hints.get("stored", 0)),
            "replayed": int(hints.get("replayed", 0)),
        },
        "clock": {
            "offset_ms": clock.get("offset_ms", 0),
            "max_offset_ms": clock.get("max_offset_ms"),
            "writes_allowed": clock.get("writes_allowed", True),
        },
        "repair": status.get("repair"),
        # The newest verification this node knows of (limedb.cluster.verifier), or None.
        "verification": (status.get("verification") or {}).get("last"),
        "epoch": status.get("epoch"),
    }


def newest_verification(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the members' stats (cluster-stats' `nodes`), the verification finished last."""
    records = [
        n["stats"]["verification"] for n in nodes if (n.get("stats") or {}).get("verification")
    ]
    return max(records, key=lambda v: (v["finishedMs"], v["node"]), default=None)
