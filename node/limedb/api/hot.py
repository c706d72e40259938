"""The hot key-value routes as one dispatcher, shared by the raw-ASGI and the wire fast paths.

`classify` recognises a hot request from its method and raw path alone (before any body is
read); `serve` runs it to a `Reply`, mapping every error to its JSON status, so that both fast
paths answer exactly alike and neither ever raises into the server.
"""

from __future__ import annotations

import logging

from limedb.api import access
from limedb.api import operations as ops
from limedb.api.errors import ApiError, error_body, from_service_error, retry_after_header
from limedb.api.state import NodeState
from limedb.api.validation import key_from_raw_path, parse_consistency, parse_ttl
from limedb.auth import Role
from limedb.cluster.service import DescriptorsExhausted, ServiceError
from limedb.connections import out_of_descriptors

log = logging.getLogger("limedb.api")

GET_PREFIX = b"/api/v1/get/"
DEL_PREFIX = b"/api/v1/del/"
SET_PATH = b"/api/v1/set"
KV_PREFIX = b"/v1/kv/"

LIME_GET = "/api/v1/get/{key}"
LIME_SET = "/api/v1/set"
LIME_DEL = "/api/v1/del/{key}"
KV = "/v1/kv/{key}"

_ALLOW = {LIME_GET: b"GET", LIME_SET: b"POST", LIME_DEL: b"DELETE", KV: b"GET, PUT, DELETE"}


def classify(method: str, raw_path: bytes) -> str | None:
    """The hot route a request addresses (whatever its method), or None for any other path."""
    if raw_path.startswith(KV_PREFIX):
        return KV
    if raw_path.startswith(GET_PREFIX):
        return LIME_GET
    if raw_path == SET_PATH:
        return LIME_SET
    if raw_path.startswith(DEL_PREFIX):
        return LIME_DEL
    return None


def allowed(route: str, method: str) -> bool:
    if route == KV:
        return method in ("GET", "PUT", "DELETE")
    return _ALLOW[route] == method.encode()


def has_body(route: str, method: str) -> bool:
    return route == LIME_SET or (route == KV and method == "PUT")


def body_limit(state: NodeState, route: str) -> int:
    limits = state.limits
    return limits.max_json_body if route == LIME_SET else limits.max_value_bytes


def error_reply(exc: Exception) -> ops.Reply:
    if isinstance(exc, ServiceError):
        exc = from_service_error(exc)
    assert isinstance(exc, ApiError)
    headers = tuple((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
    return ops.Reply(exc.status, ops.JSON, error_body(exc.message), headers)


def method_not_allowed(route: str, method: str) -> ops.Reply:
    body = b"" if method == "HEAD" else error_body(f"method {method} not allowed")
    return ops.Reply(405, ops.JSON, body, ((b"allow", _ALLOW[route]),))


def too_large(limit: int) -> ops.Reply:
    return error_reply(ApiError(413, f"request body exceeds {limit} bytes"))


BODIES_FULL = "the node holds too many request body bytes (max_buffered_body_bytes); retry later"


def bodies_full() -> ops.Reply:
    """The refusal of a body that would take the node past `max_buffered_body_bytes`."""
    return error_reply(ApiError(503, BODIES_FULL, retry_after_header(1)))


async def serve(
    state: NodeState,
    route: str,
    method: str,
    raw_path: bytes,
    query: bytes,
    body: bytes,
    credentials: tuple[bytes | None, bytes | None] = (None, None),
) -> ops.Reply:
    """Answer one hot request whose method is allowed and whose body (if any) is complete.
    `credentials`: its Authorization and X-Cluster-Secret headers (None when absent)."""
    limits = state.limits
    try:
        authorization, secret = credentials
        if access.guarded(state, authorization):
            needed = Role.READ if method in access.READ_METHODS else Role.READWRITE
            await access.check(state, needed, authorization, secret)
        service = state.require_service()
        if route == LIME_GET:
            key = key_from_raw_path(raw_path, len(GET_PREFIX), limits)
            return await ops.lime_get(service, key)
        if route == LIME_SET:
            return await ops.lime_set(service, body, limits)
        if route == LIME_DEL:
            key = key_from_raw_path(raw_path, len(DEL_PREFIX), limits)
            return await ops.lime_del(service, key)
        key = key_from_raw_path(raw_path, len(KV_PREFIX), limits)
        consistency = parse_consistency(query) if query else None
        if method == "GET":
            return await ops.kv_get(service, key, consistency)
        if method == "PUT":
            ttl = parse_ttl(query) if query else None
            return await ops.kv_put(service, key, body, ttl, consistency, limits)
        return await ops.kv_delete(service, key, consistency)
    except DescriptorsExhausted as exc:
        state.connections.exhausted(exc)
        return error_reply(exc)
    except (ApiError, ServiceError) as exc:
        return error_reply(exc)
    except Exception as exc:
        if out_of_descriptors(exc):
            assert isinstance(exc, OSError)
            message = state.connections.exhausted(exc)
            return error_reply(ApiError(503, message, retry_after_header(1)))
        log.exception("unexpected error serving %s %r", method, raw_path)
        return internal_error()


def internal_error() -> ops.Reply:
    return ops.Reply(500, ops.JSON, error_body("internal error"))
