"""The LimeDB-compatible routes (/api/v1/*) with the exact shapes its clients expect.

get/set/del are normally answered by the fast paths; the handlers here serve the same operations
when those are off (LIMEDB_FAST_PATH=false) and give the routes their OpenAPI documentation.
"""

import asyncio
import math
import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

import limedb
from limedb.api import operations as ops
from limedb.api.fastpath import read_body
from limedb.api.hot import DEL_PREFIX, GET_PREFIX
from limedb.api.params import key_param, raw_key
from limedb.api.responses import BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNAVAILABLE, text, to_response
from limedb.api.schemas import GetResponse, Health, KeysPage, ReplicasResponse
from limedb.api.state import NodeState
from limedb.auth.records import is_reserved

MAX_PAGE_SIZE = 100


class AnyKey(Convertor):
    """A key path segment that may hold any character, newlines included (Starlette's `path`
    stops at a newline, which made such keys 404 on the routes FastAPI serves)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anykey", AnyKey())
REPLICAS_PREFIX = b"/api/v1/replicas/"
MAX_PAGE = 1_000_000_000


def disk_health(storage: dict) -> dict:
    """The `disk` object of /api/v1/health, from the storage engine's stats."""
    return {
        "full": bool(storage.get("disk_full", False)),
        "outOfDescriptors": bool(storage.get("out_of_descriptors", False)),
        "readOnly": bool(storage.get("read_only", False)),
        "since": storage.get("disk_full_since"),
        "reason": storage.get("disk_full_reason"),
        "refusedWrites": int(storage.get("disk_full_refused_writes", 0)),
    }


def page_total(counted: int, asked: int, listed: int | None) -> int:
    """The `total` of a keys page. `counted` is the node's count (an estimate on a big node);
    `listed` how many of the first `asked` keys the listing returned (None when the page lies
    past the count and nothing was listed). A listing that came back short reached the last
    key, so it is the exact total; a full one says there are at least that many."""
    if listed is None:
        return counted
    if listed < asked:
        return listed
    return max(counted, listed)


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(tags=["LimeDB-compatible"])
    limits = state.limits
    Key = key_param(limits)
    set_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["key", "value"],
                    "properties": {
                        "key": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": limits.max_key_bytes,
                        },
                        "value": {"type": "string", "maxLength": limits.max_value_bytes},
                    },
                }
            }
        },
    }

    @router.get(
        "/api/v1/get/{key:path}",
        summary="Read a key",
        responses={
            200: {"model": GetResponse, "description": "the value and the owner's URL"},
            **BAD_REQUEST,
            **NOT_FOUND,
            **UNAVAILABLE,
        },
    )
    async def get_key(request: Request, key: Key) -> Response:
        service = state.require_service()
        raw = raw_key(request, GET_PREFIX, limits)
        return to_response(await ops.lime_get(service, raw))

    @router.get(
        "/api/v1/replicas/{key:anykey}",
        summary="Where a key lives: its replicas in ring order and which hold a value",
        responses={
            200: {"model": ReplicasResponse, "description": "the key's replicas"},
            **BAD_REQUEST,
            **UNAVAILABLE,
        },
    )
    async def key_replicas(request: Request, key: Key) -> Response:
        service = state.require_service()
        raw = raw_key(request, REPLICAS_PREFIX, limits)
        return to_response(await ops.lime_replicas(service, raw))

    @router.post(
        "/api/v1/set",
        summary="Write a key",
        openapi_extra={"requestBody": set_body},
        responses={
            200: text("stored", "OK"),
            **BAD_REQUEST,
            **TOO_LARGE,
            **UNAVAILABLE,
        },
    )
    async def set_key(request: Request) -> Response:
        service = state.require_service()
        body = await read_body(request.scope, request.receive, limits.max_json_body)
        return to_response(await ops.lime_set(service, body, limits))

    @router.delete(
        "/api/v1/del/{key:path}",
        summary="Delete a key",
        responses={
            200: text("`1` if a live value existed, `0` if not", "1"),
            **BAD_REQUEST,
            **UNAVAILABLE,
        },
    )
    async def delete_key(request: Request, key: Key) -> Response:
        service = state.require_service()
        raw = raw_key(request, DEL_PREFIX, limits)
        return to_response(await ops.lime_del(service, raw))

    @router.get(
        "/api/v1/keys",
        summary="This node's local keys, a page at a time, in a stable order",
        responses={200: {"model": KeysPage}, **BAD_REQUEST, **UNAVAILABLE},
    )
    async def list_keys(
        page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
        pageSize: Annotated[
            int,
            Query(
                ge=1,
                le=MAX_PAGE,
                description=f"keys per page; values above {MAX_PAGE_SIZE} are capped",
            ),
        ] = 20,
    ) -> Response:
        service = state.require_service()
        size = min(pageSize, MAX_PAGE_SIZE)
        # Counting and paging scan storage: off the event loop, so hot routes keep flowing.
        counted = await asyncio.to_thread(service.local_count)
        offset = (page - 1) * size
        listed = None
        if offset < counted:
            listed = await asyncio.to_thread(service.local_items, None, offset + size)
        items = listed[offset:] if listed is not None else []
        total = page_total(counted, offset + size, None if listed is None else len(listed))
        keys = [
            {
                "key": k.decode("utf-8", "replace"),
                "value": v.decode("utf-8", "replace"),
                "size": len(v),
            }
            for k, v in items
            if not is_reserved(k)
        ]
        body = {
            "keys": keys,
            "total": total,
            "page": page,
            "pageSize": size,
            "totalPages": math.ceil(total / size),
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get(
        "/api/v1/health",
        summary="Node health and storage statistics",
        responses={200: {"model": Health}, **UNAVAILABLE},
    )
    async def health() -> Response:
        service = state.require_service()
        storage = service.stats()
        disk = disk_health(storage)
        body = {
            "status": "degraded" if disk["full"] or disk["outOfDescriptors"] else "healthy",
            "service": "limedb-node",
            "version": limedb.__version__,
            "nodeUrl": service.node_url,
            "timestamp": int(time.time()),
            "disk": disk,
            "storage": storage,
        }
        clock = storage.pop("clock", None)
        if clock is not None:  # a clustered node: its clock against its peers'
            body["clock"] = clock
            if not clock["writes_allowed"]:
                body["status"] = "degraded"
        return Response(
            orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), media_type="application/json"
        )

    return router
