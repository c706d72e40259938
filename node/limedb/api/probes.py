"""Kubernetes probes and the Prometheus endpoint: /livez, /readyz, /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from limedb.api.cluster_metrics import ClusterCollector
from limedb.api.errors import ApiError, error_response, retry_after_header
from limedb.api.metrics import AttachedCollectors, build_registry, render
from limedb.api.responses import error
from limedb.api.schemas import Probe
from limedb.api.state import NodeState

_ALIVE = b'{"status":"alive"}'
_READY = b'{"status":"ready"}'


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(tags=["operations"])
    registry = build_registry(
        state.stats,
        lambda: state.service.stats() if state.service is not None else None,
        state.connections,
        ClusterCollector(state),
        AttachedCollectors(state.collectors),
    )

    @router.get("/livez", summary="The process is serving HTTP", responses={200: {"model": Probe}})
    async def livez() -> Response:
        return Response(_ALIVE, media_type="application/json")

    @router.get(
        "/readyz",
        summary="Storage recovery finished and the node serves keys",
        responses={200: {"model": Probe}, 503: error("not ready yet", retry_after=True)},
    )
    async def readyz() -> Response:
        if state.is_ready():
            return Response(_READY, media_type="application/json")
        return error_response(ApiError(503, "not ready", retry_after_header(1)))

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router
