"""The hot key-value operations, written once and served by both the fast path and FastAPI.

Each returns a `Reply` (status, content type, body, extra headers) or raises `ApiError` /
`ServiceError`; the caller turns that into bytes on the wire.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from limedb.api.errors import ApiError
from limedb.api.validation import Limits, check_value, key_from_text, value_from_text
from limedb.cluster.service import Consistency, KeyValueService
from limedb.hlc import millis_of

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"
OCTET = b"application/octet-stream"

_OK = b"OK"
_NOT_FOUND = b'{"error":"key not found"}'


class Reply(NamedTuple):
    status: int
    content_type: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


NOT_FOUND = Reply(404, JSON, _NOT_FOUND)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def parse_json_object(body: bytes) -> dict:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Invalid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid JSON: expected an object")
    return data


async def lime_get(service: KeyValueService, key: bytes) -> Reply:
    result = await service.get(key)
    if result.value is None:
        return NOT_FOUND
    return Reply(
        200,
        JSON,
        orjson.dumps(
            {
                "value": _text(result.value),
                "nodeUrl": result.owner_url,
                "timestamp_micros": millis_of(result.ts) * 1000,
            }
        ),
    )


async def lime_replicas(service: KeyValueService, key: bytes) -> Reply:
    report = await service.replica_report(key)
    body = {
        "key": _text(key),
        "replication_factor": report.replication_factor,
        "quorum": report.quorum,
        "replicas": [
            {
                "node_url": r.node_url,
                "is_primary": r.is_primary,
                "is_local": r.is_local,
                "has_value": r.has_value,
                "answered": r.answered,
            }
            for r in report.replicas
        ],
    }
    return Reply(200, JSON, orjson.dumps(body))


async def lime_set(service: KeyValueService, body: bytes, limits: Limits) -> Reply:
    data = parse_json_object(body)
    if "key" not in data:
        raise ApiError(400, "missing field: key")
    if "value" not in data:
        raise ApiError(400, "missing field: value")
    key = key_from_text(data["key"], limits)
    value = value_from_text(data["value"], limits)
    await service.put(key, value)
    return Reply(200, TEXT, _OK)


async def lime_del(service: KeyValueService, key: bytes) -> Reply:
    existed = await service.delete(key)
    return Reply(200, TEXT, b"1" if existed else b"0")


async def kv_get(service: KeyValueService, key: bytes, consistency: Consistency | None) -> Reply:
    result = await service.get(key, consistency)
    if result.value is None:
        return NOT_FOUND
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"x-limedb-timestamp", str(result.ts).encode()),
        (b"x-limedb-owner", result.owner_url.encode()),
    )
    if result.expires_at_ms is not None:
        headers += ((b"x-limedb-expires-at-ms", str(result.expires_at_ms).encode()),)
    return Reply(200, OCTET, result.value, headers)


async def kv_put(
    service: KeyValueService,
    key: bytes,
    value: bytes,
    ttl_ms: int | None,
    consistency: Consistency | None,
    limits: Limits,
) -> Reply:
    check_value(value, limits)
    ts = await service.put(key, value, ttl_ms=ttl_ms, consistency=consistency)
    return Reply(200, JSON, orjson.dumps({"ts": ts}))


async def kv_delete(service: KeyValueService, key: bytes, consistency: Consistency | None) -> Reply:
    existed = await service.delete(key, consistency)
    return Reply(200, JSON, b'{"deleted":true}' if existed else b'{"deleted":false}')
