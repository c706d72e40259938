"""A raw-ASGI front door: serves the hot key-value routes itself, hands the rest to FastAPI.

The LimeDB get/set/del routes and /v1/kv/{key} are matched by method and raw-path prefix and
answered with two `send` calls, skipping FastAPI's routing, dependency injection and response
classes (the FastAPI routes with the same paths still exist for the OpenAPI document). Both
this layer and the wire-level path in `wire.py` dispatch through `hot.serve`, so they answer
alike. It also enforces the in-flight request limit and records per-route metrics for all routes,
and gives every other route a body limit too (`route_body_limit`): a declared Content-Length
over it is refused with 413 before the app runs, and a chunked body is counted as it streams in
and refused as soon as it passes the limit, so no route buffers more than its limit. The bodies
held by all requests together are bounded as well (`max_buffered_body_bytes`, 503 beyond).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from limedb.api import access, hot
from limedb.api import operations as ops
from limedb.api.errors import ApiError, retry_after_header
from limedb.api.state import NodeState
from limedb.auth import Role
from limedb.cluster.service import ServiceError
from limedb.connections import ConnectionBudget

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and metrics must answer however loaded the node is, and so must the operator's admin
# calls (status, a leave): none of them is admitted or counted.
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
UNLIMITED_PREFIX = "/admin/"


def admitted(path: str | bytes) -> bool:
    """Whether requests to `path` go through admission control (most do)."""
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    return path not in UNLIMITED_PATHS and not path.startswith(UNLIMITED_PREFIX)


BATCH_PATH = b"/v1/batch"


def route_body_limit(state: NodeState, method: str, raw_path: bytes) -> int:
    """The largest request body the route of `raw_path` accepts."""
    route = hot.classify(method, raw_path)
    if route is not None:
        return hot.body_limit(state, route)
    if raw_path == BATCH_PATH:
        return state.config.max_batch_bytes
    return state.config.max_body_bytes


_JSON = b"application/json"


def json_whatever_declared(scope: Scope) -> Scope:
    """The scope of a request whose body is read as JSON whatever its Content-Type says, as
    /api/v1/set reads it and the original LimeDB's routes do: `curl -d '{...}'` sends
    application/x-www-form-urlencoded, and FastAPI would not parse that body as JSON."""
    headers = scope["headers"]
    for name, value in headers:
        if name == b"content-type":
            declared = value.split(b";", 1)[0].strip().lower()
            if declared == _JSON or declared.endswith(b"+json"):
                return scope
    kept = [(n, v) for n, v in headers if n != b"content-type"]
    return {**scope, "headers": [*kept, (b"content-type", _JSON)]}


def credentials_of(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """A request's Authorization and X-Cluster-Secret headers (None when absent)."""
    authorization = secret = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"x-cluster-secret":
            secret = value
    return authorization, secret


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes its limit. An HTTPException, so that
    FastAPI's body parsing lets it through to the JSON error handler (413), not a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodiesFull(HTTPException):
    """Raised from `receive` when the node already holds `max_buffered_body_bytes` of bodies."""

    def __init__(self) -> None:
        super().__init__(503, hot.BODIES_FULL, retry_after_header(1))


class BodyMeter:
    """`receive` of one request, counting its body: past the route's `limit` it raises
    BodyTooLarge, past the node-wide `cap` on body bytes held it raises BodiesFull. The bytes
    count as held until `release()`, when the request is answered."""

    __slots__ = ("receive", "limit", "budget", "cap", "size", "held")

    def __init__(self, receive: Receive, limit: int, budget: ConnectionBudget, cap: int) -> None:
        self.receive = receive
        self.limit = limit
        self.budget = budget
        self.cap = cap
        self.size = 0
        self.held = 0

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.request":
            chunk = len(message.get("body", b""))
            self.size += chunk
            if self.size > self.limit:
                raise BodyTooLarge(self.limit)
            budget = self.budget
            budget.http_buffered_bytes += chunk
            self.held += chunk
            if chunk and budget.http_buffered_bytes > self.cap:
                budget.http_buffer_refusals += 1
                raise BodiesFull
        return message

    def release(self) -> None:
        self.budget.http_buffered_bytes -= self.held
        self.held = 0


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


def overloaded() -> ops.Reply:
    """The refusal of a request the admission control has no room for: 503, Retry-After."""
    return hot.error_reply(
        ApiError(503, "node overloaded: too many requests in flight", retry_after_header(1))
    )


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
    """ASGI middleware: hot routes answered in place, the rest passed to `app` (FastAPI)."""

    def __init__(self, app: ASGIApp, state: NodeState) -> None:
        self.app = app
        self.state = state
        self.enabled = state.config.fast_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        path: str = scope["path"]
        if not admitted(path):
            await self._serve(scope, receive, send)
            return
        admission = state.admission
        if not admission.try_enter():
            waiter = admission.enqueue()
            if waiter is None:
                await send_reply(send, overloaded())
                state.stats.observe(scope["method"], "overloaded", 503, 0.0)
                return
            await admission.wait(waiter)
        try:
            await self._serve(scope, receive, send)
        finally:
            admission.leave()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        limit = route_body_limit(state, method, raw_path)
        meter = BodyMeter(receive, limit, state.connections, state.config.max_buffered_body_bytes)
        try:
            await self._serve_route(scope, meter, send, method, raw_path)
        finally:
            meter.release()

    async def _serve_route(
        self, scope: Scope, meter: BodyMeter, send: Send, method: str, raw_path: bytes
    ) -> None:
        state = self.state
        started = time.perf_counter()
        route = hot.classify(method, raw_path) if self.enabled else None
        if route is None:
            await self._serve_app(scope, meter, send, started)
            return
        if not hot.allowed(route, method):
            reply = hot.method_not_allowed(route, method)
        else:
            body = b""
            if hot.has_body(route, method):
                try:
                    body = await read_body(scope, meter, meter.limit)
                except ClientDisconnected:
                    return
                except (ApiError, HTTPException) as exc:
                    if isinstance(exc, HTTPException):  # from the meter
                        exc = ApiError(exc.status_code, exc.detail, dict(exc.headers or {}))
                    reply = hot.error_reply(exc)
                    await send_reply(send, reply)
                    state.stats.observe(method, route, reply.status, 0.0)
                    return
            query: bytes = scope.get("query_string", b"")
            credentials = credentials_of(scope["headers"])
            reply = await hot.serve(state, route, method, raw_path, query, body, credentials)
        await send_reply(send, reply)
        state.stats.observe(method, route, reply.status, time.perf_counter() - started)

    async def _refusal(self, scope: Scope, method: str) -> ops.Reply | None:
        """The 401/403 (or 503) of a request its credentials do not allow (access.py)."""
        needed = access.needed_role(method, scope["path"])
        if needed is None:
            return None
        authorization, secret = credentials_of(scope["headers"])
        if needed is not Role.ADMIN and not access.guarded(self.state, authorization):
            return None
        try:
            await access.check(self.state, needed, authorization, secret)
        except (ApiError, ServiceError) as exc:
            return hot.error_reply(exc)
        return None

    async def _serve_app(self, scope: Scope, meter: BodyMeter, send: Send, started: float) -> None:
        method: str = scope["method"]
        declared = declared_length(scope)
        if declared is not None and declared > meter.limit:
            # Refused before the app reads a byte; uvicorn drops the body as it arrives.
            reply = hot.too_large(meter.limit)
            await send_reply(send, reply)
            self.state.stats.observe(method, "too_large", reply.status, 0.0)
            return
        refusal = await self._refusal(scope, method)
        if refusal is not None:
            await send_reply(send, refusal)
            self.state.stats.observe(method, "refused", refusal.status, 0.0)
            return
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if method == "POST" and scope.get("raw_path") == BATCH_PATH:
            scope = json_whatever_declared(scope)
        try:
            await self.app(scope, meter, recording_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.state.stats.observe(scope["method"], label, status, time.perf_counter() - started)
