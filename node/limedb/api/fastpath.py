"""A raw-ASGI front door: serves the hot key-value routes itself, hands the rest to FastAPI.

The LimeDB get/set/del routes and /v1/kv/{key} are matched by method and raw-path prefix and
answered with two `send` calls, skipping FastAPI's routing, dependency injection and response
classes (the FastAPI routes with the same paths still exist for the OpenAPI document and for
methods handled there, such as HEAD). Everything else, and every request when the fast path is
disabled, goes to the wrapped application. Both paths share `operations`, so they answer alike.
It also enforces the in-flight request limit and records per-route metrics for all routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from limedb.api import operations as ops
from limedb.api.errors import ApiError, error_body, from_service_error, retry_after_header
from limedb.api.state import NodeState
from limedb.api.validation import key_from_raw_path, parse_consistency, parse_ttl
from limedb.cluster.service import ServiceError

log = logging.getLogger("limedb.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GET_PREFIX = b"/api/v1/get/"
DEL_PREFIX = b"/api/v1/del/"
SET_PATH = b"/api/v1/set"
KV_PREFIX = b"/v1/kv/"
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class MethodNotAllowed(Exception):
    """A hot route's path with a method it does not serve: 405 listing every allowed method."""

    def __init__(self, route: str, allow: bytes) -> None:
        self.route = route
        self.allow = allow


class ClientDisconnected(Exception):
    """The client went away before sending its whole body; nothing to answer."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ApiError(400, "invalid Content-Length") from None
            if declared > limit:
                raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}")
            break
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes")
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def reply_for_error(exc: Exception) -> ops.Reply:
    if isinstance(exc, ServiceError):
        exc = from_service_error(exc)
    assert isinstance(exc, ApiError)
    headers = tuple((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
    return ops.Reply(exc.status, ops.JSON, error_body(exc.message), headers)


async def send_reply(send: Send, reply: ops.Reply) -> None:
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
    ]
    if reply.headers:
        headers.extend(reply.headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class FastPath:
    """ASGI middleware: hot routes answered in place, the rest passed to `app`."""

    def __init__(self, app: ASGIApp, state: NodeState) -> None:
        self.app = app
        self.state = state
        self.enabled = state.config.fast_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        limit = state.config.max_inflight
        if limit and state.inflight >= limit and scope["path"] not in UNLIMITED_PATHS:
            err = ApiError(
                503, "node overloaded: too many requests in flight", retry_after_header(1)
            )
            await send_reply(send, reply_for_error(err))
            state.stats.observe(scope["method"], "overloaded", 503, 0.0)
            return
        state.inflight += 1
        started = time.perf_counter()
        try:
            handled = self.enabled and await self._serve_hot(scope, receive, send, started)
            if not handled:
                await self._serve_app(scope, receive, send, started)
        finally:
            state.inflight -= 1

    async def _serve_hot(self, scope: Scope, receive: Receive, send: Send, started: float) -> bool:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        state = self.state
        limits = state.limits
        try:
            if raw_path.startswith(KV_PREFIX):
                if method not in ("GET", "PUT", "DELETE"):
                    raise MethodNotAllowed("/v1/kv/{key}", b"GET, PUT, DELETE")
                route = "/v1/kv/{key}"
                service = state.require_service()
                key = key_from_raw_path(raw_path, len(KV_PREFIX), limits)
                qs: bytes = scope.get("query_string", b"")
                consistency = parse_consistency(qs) if qs else None
                if method == "GET":
                    reply = await ops.kv_get(service, key, consistency)
                elif method == "PUT":
                    ttl = parse_ttl(qs) if qs else None
                    body = await read_body(scope, receive, limits.max_value_bytes)
                    reply = await ops.kv_put(service, key, body, ttl, consistency, limits)
                else:
                    reply = await ops.kv_delete(service, key, consistency)
            elif method == "GET" and raw_path.startswith(GET_PREFIX):
                route = "/api/v1/get/{key}"
                service = state.require_service()
                key = key_from_raw_path(raw_path, len(GET_PREFIX), limits)
                reply = await ops.lime_get(service, key)
            elif method == "POST" and raw_path == SET_PATH:
                route = "/api/v1/set"
                service = state.require_service()
                body = await read_body(scope, receive, limits.max_json_body)
                reply = await ops.lime_set(service, body, limits)
            elif method == "DELETE" and raw_path.startswith(DEL_PREFIX):
                route = "/api/v1/del/{key}"
                service = state.require_service()
                key = key_from_raw_path(raw_path, len(DEL_PREFIX), limits)
                reply = await ops.lime_del(service, key)
            elif raw_path.startswith(GET_PREFIX):
                raise MethodNotAllowed("/api/v1/get/{key}", b"GET")
            elif raw_path == SET_PATH:
                raise MethodNotAllowed("/api/v1/set", b"POST")
            elif raw_path.startswith(DEL_PREFIX):
                raise MethodNotAllowed("/api/v1/del/{key}", b"DELETE")
            else:
                return False
        except MethodNotAllowed as exc:
            route = exc.route
            body = b"" if method == "HEAD" else error_body(f"method {method} not allowed")
            reply = ops.Reply(405, ops.JSON, body, ((b"allow", exc.allow),))
        except (ApiError, ServiceError) as exc:
            reply = reply_for_error(exc)
        except ClientDisconnected:
            return True
        except Exception:
            log.exception("unexpected error serving %s %r", method, raw_path)
            reply = ops.Reply(500, ops.JSON, error_body("internal error"))
        await send_reply(send, reply)
        state.stats.observe(method, route, reply.status, time.perf_counter() - started)
        return True

    async def _serve_app(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.state.stats.observe(scope["method"], label, status, time.perf_counter() - started)
