"""Native routes: raw-bytes values at /v1/kv/{key} (TTL, per-request consistency) and /v1/batch."""

import asyncio
import base64
import binascii
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from limedb.api import operations as ops
from limedb.api.errors import ApiError
from limedb.api.fastpath import read_body
from limedb.api.hot import KV_PREFIX
from limedb.api.params import key_param, raw_key
from limedb.api.responses import BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNAVAILABLE, to_response
from limedb.api.schemas import BatchPutBinary, BatchRequest, BatchResponse, DeleteResult, PutResult
from limedb.api.state import NodeState
from limedb.api.validation import (
    MAX_TTL_SECONDS,
    check_value,
    key_from_text,
    parse_consistency,
    parse_ttl,
    value_from_text,
)
from limedb.cluster.service import Consistency

Level = Annotated[
    Consistency | None,
    Query(description="replicas that must answer; default: the node's configured level"),
]


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["native"])
    limits = state.limits
    Key = key_param(limits)

    @router.get(
        "/kv/{key:path}",
        summary="Read raw bytes",
        responses={
            200: {
                "description": "the value",
                "headers": {
                    "X-Limedb-Timestamp": {
                        "description": "hybrid logical clock timestamp of this version",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                    "X-Limedb-Owner": {
                        "description": "URL of the node that owns the key",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    "X-Limedb-Expires-At-Ms": {
                        "description": "when the value expires (Unix ms), if it has a TTL",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                },
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            **BAD_REQUEST,
            **NOT_FOUND,
            **UNAVAILABLE,
        },
    )
    async def kv_get(request: Request, key: Key, consistency: Level = None) -> Response:
        service = state.require_service()
        level = parse_consistency(request.scope.get("query_string", b""))
        return to_response(await ops.kv_get(service, raw_key(request, KV_PREFIX, limits), level))

    @router.put(
        "/kv/{key:path}",
        summary="Write raw bytes, optionally expiring",
        openapi_extra={
            "requestBody": {
                "required": False,
                "description": "the value; an absent body stores an empty value",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
        responses={200: {"model": PutResult}, **BAD_REQUEST, **TOO_LARGE, **UNAVAILABLE},
    )
    async def kv_put(
        request: Request,
        key: Key,
        ttl: Annotated[
            float | None, Query(gt=0, le=MAX_TTL_SECONDS, description="seconds until it expires")
        ] = None,
        consistency: Level = None,
    ) -> Response:
        service = state.require_service()
        qs = request.scope.get("query_string", b"")
        body = await read_body(request.scope, request.receive, limits.max_value_bytes)
        reply = await ops.kv_put(
            service,
            raw_key(request, KV_PREFIX, limits),
            body,
            parse_ttl(qs),
            parse_consistency(qs),
            limits,
        )
        return to_response(reply)

    @router.delete(
        "/kv/{key:path}",
        summary="Delete a key",
        responses={200: {"model": DeleteResult}, **BAD_REQUEST, **UNAVAILABLE},
    )
    async def kv_delete(request: Request, key: Key, consistency: Level = None) -> Response:
        service = state.require_service()
        level = parse_consistency(request.scope.get("query_string", b""))
        return to_response(await ops.kv_delete(service, raw_key(request, KV_PREFIX, limits), level))

    @router.post(
        "/batch",
        summary="Read and write many keys in one request (not atomic)",
        responses={200: {"model": BatchResponse}, **BAD_REQUEST, **TOO_LARGE, **UNAVAILABLE},
    )
    async def batch(request: BatchRequest) -> Response:
        service = state.require_service()
        count = len(request.get) + len(request.put)
        if count > limits.max_batch_items:
            raise ApiError(413, f"batch has {count} items; the limit is {limits.max_batch_items}")
        b64 = request.encoding == "base64"
        puts = []
        for item in request.put:
            key = key_from_text(item.key, limits, "put[].key")
            if isinstance(item, BatchPutBinary):
                try:
                    value = base64.b64decode(item.value_base64, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(400, f"value_base64 of {item.key!r} is not base64") from None
                check_value(value, limits)
            else:
                value = value_from_text(item.value, limits)
            ttl_ms = max(1, round(item.ttl * 1000)) if item.ttl else None
            puts.append((key, value, ttl_ms))
        keys = [key_from_text(k, limits, "get[]") for k in request.get]
        # Writes first, so a batch that reads what it writes sees its own values.
        await asyncio.gather(*(service.put(k, v, ttl_ms=t) for k, v, t in puts))
        results = await asyncio.gather(*(service.get(k) for k in keys))
        values = {}
        for key, result in zip(request.get, results, strict=True):
            if result.value is None:
                values[key] = None
            elif b64:
                values[key] = base64.b64encode(result.value).decode("ascii")
            else:
                values[key] = result.value.decode("utf-8", "replace")
        body = orjson.dumps({"values": values, "written": len(puts)})
        return Response(body, media_type="application/json")

    return router
