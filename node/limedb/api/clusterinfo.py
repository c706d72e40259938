"""/api/v1/cluster/{state,ring,gossip}: the service's ClusterView in LimeDB's JSON shapes."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from limedb.api.responses import UNAVAILABLE
from limedb.api.schemas import ClusterState, GossipInfo, RingInfo
from limedb.api.state import NodeState
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.view import ClusterView

RING_SIZE = 1 << 64


def _degrees(position: int) -> float:
    return position * 360.0 / RING_SIZE


def state_body(view: ClusterView) -> dict[str, Any]:
    urls = [m.url for m in view.members]
    return {
        "nodeUrl": view.node_url,
        "peers": urls,
        "totalNodes": len(urls),
        "status": "active",
        "ringEpoch": view.ring_epoch,
        "members": [
            {"nodeId": m.node_id, "url": m.url, "state": m.state, "status": m.status}
            for m in view.members
        ],
    }


def ring_body(view: ClusterView) -> dict[str, Any]:
    tokens = view.tokens
    distribution: dict[str, int] = defaultdict(int)
    ranges: dict[str, list[dict[str, int]]] = defaultdict(list)
    degrees: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, (token, url) in enumerate(tokens):
        # A virtual node owns the tokens after its predecessor's, up to and including its own.
        previous = tokens[i - 1][0]
        start = (previous + 1) % RING_SIZE
        # A one-token ring owns all 2**64 tokens, more than a uint64 reader can hold.
        size = min((token - previous) % RING_SIZE or RING_SIZE, MAX_TOKEN)
        distribution[url] += 1
        ranges[url].append({"start": start, "end": token, "hash": token, "size": size})
        degrees[url].append(
            {
                "startHash": start,
                "endHash": token,
                "hash": token,
                "startDegrees": _degrees(start),
                "endDegrees": _degrees(token),
                "sizeDegrees": _degrees(size),
                "sizeHash": size,
            }
        )
    all_nodes = sorted({m.url for m in view.members} | set(distribution))
    return {
        "totalNodes": len(all_nodes),
        "virtualNodes": len(tokens),
        "virtualNodesPerNode": view.vnodes_per_node,
        "virtualNodeDistribution": dict(distribution),
        "currentNode": view.node_url,
        "allNodes": all_nodes,
        "ranges": dict(ranges),
        "rangesDegrees": dict(degrees),
    }


def gossip_body(view: ClusterView) -> dict[str, Any]:
    peers = view.gossip_peers
    if not peers:
        return {
            "status": "standalone",
            "node_url": view.node_url,
            "node_heartbeat": view.heartbeat,
            "total_peers": 0,
            "cluster_health": "N/A",
        }
    counts = {"active": 0, "stale": 0, "dead": 0}
    for peer in peers:
        counts[peer.status if peer.status in counts else "dead"] += 1
    lags = [p.lag for p in peers]
    healthy_share = counts["active"] / len(peers)
    if healthy_share == 1.0:
        health = "healthy"
    elif counts["active"] + 1 > (len(peers) + 1) / 2:
        health = "degraded"
    else:
        health = "critical"
    return {
        "node_url": view.node_url,
        "node_heartbeat": view.heartbeat,
        "cluster_health": health,
        "total_peers": len(peers),
        "active_peers": counts["active"],
        "stale_peers": counts["stale"],
        "dead_peers": counts["dead"],
        "convergence_rate": round(healthy_share * 100.0, 2),
        "average_lag": sum(lags) / len(lags),
        "max_lag": max(lags),
        "peer_details": [
            {"url": p.url, "heartbeat": p.heartbeat, "lag": p.lag, "status": p.status}
            for p in peers
        ],
        "timestamp": int(time.time()),
    }


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(prefix="/api/v1/cluster", tags=["LimeDB-compatible"])

    @router.get("/state", responses={200: {"model": ClusterState}, **UNAVAILABLE})
    async def cluster_state() -> Response:
        return _json(state_body(state.require_service().cluster_view()))

    @router.get("/ring", responses={200: {"model": RingInfo}, **UNAVAILABLE})
    async def cluster_ring() -> Response:
        return _json(ring_body(state.require_service().cluster_view()))

    @router.get("/gossip", responses={200: {"model": GossipInfo}, **UNAVAILABLE})
    async def cluster_gossip() -> Response:
        return _json(gossip_body(state.require_service().cluster_view()))

    return router
