"""The dashboard: a static page at `/ui` and the two JSON routes it adds to the admin API.

The page (limedb/api/ui: HTML, JS and CSS, no build step and no third-party code) reads
`/admin/status` (members, epoch, the running transition), `/api/v1/cluster/ring` (token
ownership) and `/admin/cluster-stats` (every member's `/admin/stats`, gathered by the node that
serves the page, so a browser needs to reach one node only). The page itself holds no data and
is served without credentials; every JSON route it reads needs an admin: a user with role
`admin` (Basic) once users exist, the cluster secret (`X-Cluster-Secret`) before that. The page
asks for them and keeps them in the tab's sessionStorage (docs/dashboard.md).
`/admin/cluster-stats` asks the other members with the caller's own credentials (its
Authorization header, else this node's secret): the members proved at their join that they
hold the cluster secret, and each checks the admin as any node does, so no node acts with
more than the caller may.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from limedb.api.admin import SECRET_HEADER
from limedb.api.errors import ApiError
from limedb.api.nodestats import newest_verification, node_stats
from limedb.api.state import NodeState

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PEER_TIMEOUT_S = 1.5
# The page loads only its own files and talks only to the node that served it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_STORE = {"Cache-Control": "no-store"}


def _asset(name: str) -> bytes:
    return (resources.files("limedb.api") / "ui" / name).read_bytes()


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=NO_STORE)


async def _peer_stats(client: httpx.AsyncClient, node_id: str, url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"node_id": node_id, "url": url, "reachable": False}
    try:
        response = await client.get(f"{url}/admin/stats")
    except httpx.HTTPError as exc:
        return {**entry, "error": f"unreachable: {type(exc).__name__}"}
    if response.status_code != 200:
        return {**entry, "error": f"answered {response.status_code}"}
    try:
        return {**entry, "reachable": True, "stats": response.json()}
    except ValueError:
        return {**entry, "error": "answered something that is not JSON"}


def peer_headers(authorization: str | None, secret: str | None) -> dict[str, str]:
    """What `/admin/cluster-stats` presents to the other members: the caller's Authorization
    when it sent one (an admin user), else the cluster secret (before any user exists)."""
    if authorization is not None:
        return {"authorization": authorization}
    return {SECRET_HEADER: secret} if secret is not None else {}


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(tags=["dashboard"])
    secret = state.config.cluster_secret

    @router.get("/ui", include_in_schema=False)
    @router.get("/ui/", include_in_schema=False)
    async def page() -> Response:
        return Response(_asset("index.html"), media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/ui/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise ApiError(404, f"no dashboard asset {name!r}")
        return Response(_asset(name), media_type=media_type, headers=PAGE_HEADERS)

    @router.get("/admin/stats", tags=["admin"], summary="This node's numbers for the dashboard")
    async def stats(request: Request) -> Response:
        return _json(node_stats(state))

    @router.get(
        "/admin/cluster-stats",
        tags=["admin"],
        summary="Every ring member's /admin/stats, gathered by this node",
    )
    async def cluster_stats(request: Request) -> Response:
        service = state.require_service()
        record = service.ring_record()
        members = record.all_members() if record is not None else {}
        if not members:
            members = {service.node_id: service.node_url}
        own = node_stats(state)
        headers = peer_headers(request.headers.get("authorization"), secret)
        async with httpx.AsyncClient(
            timeout=PEER_TIMEOUT_S,
            headers=headers,
            follow_redirects=False,
            trust_env=False,
            verify=state.peer_verify(),
        ) as client:
            peers = [
                _peer_stats(client, node_id, url)
                for node_id, url in sorted(members.items())
                if node_id != service.node_id
            ]
            gathered = await asyncio.gather(*peers)
        nodes = list(gathered)
        if service.node_id in members:
            mine = {"node_id": service.node_id, "url": service.node_url, "reachable": True}
            nodes.append({**mine, "stats": own})
        nodes.sort(key=lambda n: n["node_id"])
        return _json(
            {
                "node_id": service.node_id,
                "nodes": nodes,
                "verification": newest_verification(nodes),
            }
        )

    return router
