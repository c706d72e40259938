"""Pure functions building the LimeDB JSON of /api/v1/cluster/{state,ring,gossip}.

The shapes are the original LimeDB's (shared/LIMEDB_API.md) so its dashboard, TUI and load
tester work unchanged: nodes are keyed by URL, ranges run from the previous token + 1 to the
vnode token. Two fixes: degrees come out in 0..360, and gossip statuses come from the failure
detector (alive -> active, suspect -> stale, dead -> dead). Extra fields (ring epoch, node ids,
member states, token share) are added next to the original ones, never instead of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

from limedb.cluster.failure import Liveness
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.membership import MembershipSnapshot
from limedb.cluster.ring import TOKEN_SPACE, Ring

GOSSIP_STATUS = {Liveness.ALIVE: "active", Liveness.SUSPECT: "stale", Liveness.DEAD: "dead"}


def degrees(token: int) -> float:
    """A token's angle on the ring drawing, 0 <= degrees < 360, to two decimals."""
    return round(token / TOKEN_SPACE * 360.0, 2)


def member_urls(snapshot: MembershipSnapshot) -> dict[str, str]:
    """node_id -> the URL to show for every ring member, preferring live announcements
    (a pod's address may have changed since the ring record was written)."""
    ring = snapshot.ring
    if ring is None:
        return {snapshot.node_id: snapshot.node_url}
    urls = dict(ring.members)
    for peer in snapshot.peers:
        if peer.node_id in urls:
            urls[peer.node_id] = peer.url
    if snapshot.node_id in urls:
        urls[snapshot.node_id] = snapshot.node_url
    return urls


def ring_view(ring: Ring, current_url: str, urls: Mapping[str, str] | None = None) -> dict:
    """/api/v1/cluster/ring. `urls` overrides the ring record's member URLs (see
    member_urls). The result is cached per ring and shared: serialize it, never mutate it."""
    return _ring_view(ring, current_url, tuple(sorted((urls or {}).items())))


@lru_cache(maxsize=8)
def _ring_view(ring: Ring, current_url: str, url_items: tuple[tuple[str, str], ...]) -> dict:
    url_of = {**ring.members, **dict(url_items)}
    ranges: dict[str, list[dict]] = {url_of[n]: [] for n in ring.node_ids}
    ranges_degrees: dict[str, list[dict]] = {url_of[n]: [] for n in ring.node_ids}
    for r in ring.ranges():
        url = url_of[r.node_id]
        # A one-token ring's range is the whole space, 2**64, which no JSON int64/uint64
        # reader can hold; report the largest representable size instead.
        size = min(r.size, MAX_TOKEN)
        ranges[url].append({"start": r.start, "end": r.end, "hash": r.end, "size": size})
        ranges_degrees[url].append(
            {
                "startHash": r.start,
                "endHash": r.end,
                "hash": r.end,
                "startDegrees": degrees(r.start),
                "endDegrees": degrees(r.end),
                "sizeDegrees": round(r.size / TOKEN_SPACE * 360.0, 2),
                "sizeHash": size,
            }
        )
    per_node = max(ring.vnodes, 1)
    return {
        "totalNodes": len(ring),
        "virtualNodes": len(ring.tokens),
        "virtualNodesPerNode": ring.vnodes,
        "virtualNodeDistribution": {url_of[n]: per_node for n in ring.node_ids},
        "currentNode": current_url,
        "allNodes": [url_of[n] for n in ring.node_ids],
        "ranges": ranges,
        "rangesDegrees": ranges_degrees,
        "ringEpoch": ring.epoch,
        "nodeIds": {url_of[n]: n for n in ring.node_ids},
    }


def cluster_state_view(snapshot: MembershipSnapshot) -> dict:
    """/api/v1/cluster/state: LimeDB's {nodeUrl, peers (incl. self), totalNodes, status} plus
    this node's id, the ring epoch and every member's state, liveness and token share."""
    ring = snapshot.ring
    urls = member_urls(snapshot)
    share = ring.token_share() if ring is not None else {}
    members = [
        {
            "nodeId": snapshot.node_id,
            "url": snapshot.node_url,
            "state": snapshot.status,
            "liveness": Liveness.ALIVE.value,
            "inRing": ring is not None and snapshot.node_id in ring,
            "tokenShare": share.get(snapshot.node_id, 0.0),
            "self": True,
        }
    ]
    for peer in snapshot.peers:
        members.append(
            {
                "nodeId": peer.node_id,
                "url": peer.url,
                "state": peer.status,
                "liveness": peer.liveness.value,
                "inRing": peer.in_ring,
                "tokenShare": share.get(peer.node_id, 0.0),
                "self": False,
            }
        )
    peers = list(urls.values())
    return {
        "nodeUrl": snapshot.node_url,
        "peers": peers,
        "totalNodes": len(peers),
        "status": "active",
        "nodeId": snapshot.node_id,
        "ringEpoch": ring.epoch if ring is not None else None,
        "members": members,
    }


def gossip_view(snapshot: MembershipSnapshot, now_s: float) -> dict:
    """/api/v1/cluster/gossip. `lag` is in gossip rounds since the peer's heartbeat last
    advanced here; `now_s` is the wall clock (Unix seconds) for `timestamp`."""
    common = {
        "node_url": snapshot.node_url,
        "node_id": snapshot.node_id,
        "ring_epoch": snapshot.ring.epoch if snapshot.ring is not None else None,
        "generation": snapshot.generation,
    }
    if not snapshot.peers:
        return {
            "status": "standalone",
            "node_heartbeat": snapshot.heartbeat,
            "total_peers": 0,
            "cluster_health": "N/A",
            **common,
        }
    counts = {"active": 0, "stale": 0, "dead": 0}
    details = []
    lags: list[int] = []
    active_lags: list[int] = []
    for peer in snapshot.peers:
        status = GOSSIP_STATUS[peer.liveness]
        counts[status] += 1
        lag = (
            int(peer.silence_s / snapshot.gossip_interval_s) if math.isfinite(peer.silence_s) else 0
        )
        lags.append(lag)
        if status == "active":
            active_lags.append(lag)
        details.append(
            {
                "url": peer.url,
                "heartbeat": peer.version,
                "lag": lag,
                "status": status,
                "node_id": peer.node_id,
                "liveness": peer.liveness.value,
                "phi": round(peer.phi, 2) if math.isfinite(peer.phi) else None,
                "generation": peer.generation,
                "state": peer.status,
            }
        )
    total = len(snapshot.peers)
    if counts["dead"] > total // 2:
        health = "critical"
    elif counts["stale"] or counts["dead"]:
        health = "degraded"
    else:
        health = "healthy"
    return {
        "node_heartbeat": snapshot.heartbeat,
        "cluster_health": health,
        "total_peers": total,
        "active_peers": counts["active"],
        "stale_peers": counts["stale"],
        "dead_peers": counts["dead"],
        "convergence_rate": counts["active"] / total * 100.0,
        "average_lag": sum(active_lags) / len(active_lags) if active_lags else 0.0,
        "max_lag": max(lags),
        "peer_details": details,
        "timestamp": int(now_s),
        **common,
    }
