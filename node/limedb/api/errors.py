"""Error replies: every failure is JSON `{"error": "..."}` with a precise status code.

`ApiError` is raised by validation and mapped identically by the raw-ASGI fast path and by the
FastAPI exception handlers, so a client sees the same body whichever path served it.
"""

from __future__ import annotations

import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from limedb.cluster.service import (
    DescriptorsExhausted,
    InsufficientStorage,
    InvalidRequest,
    ServiceError,
    Unavailable,
)
from limedb.connections import out_of_descriptors

JSON = b"application/json"


class ApiError(Exception):
    """A request the node refuses, with the status and message the client gets."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def from_service_error(exc: ServiceError) -> ApiError:
    """Map the service contract's errors onto HTTP: Unavailable -> 503, InsufficientStorage
    (a full disk) -> 507, InvalidRequest -> 400."""
    if isinstance(exc, Unavailable):
        return ApiError(503, str(exc) or "service unavailable", retry_after_header(exc.retry_after))
    if isinstance(exc, InsufficientStorage):
        return ApiError(507, str(exc) or "disk full", retry_after_header(exc.retry_after))
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc) or "invalid request")
    return ApiError(503, str(exc) or "service error", retry_after_header(1.0))


def not_ready() -> ApiError:
    return ApiError(503, "node is starting: storage recovery in progress", retry_after_header(1.0))


def error_response(err: ApiError) -> Response:
    return Response(error_body(err.message), err.status, err.headers, media_type="application/json")


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors()[:3]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors (422 validation, 404/405 routing) speak the same JSON."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        if isinstance(exc, DescriptorsExhausted):
            request.app.state.node.connections.exhausted(exc)
        return error_response(from_service_error(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(ApiError(400, _describe_validation(exc)))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(ApiError(exc.status_code, message, dict(exc.headers or {})))

    async def on_os_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OSError)
        if not out_of_descriptors(exc):
            raise exc  # a 500, as any unexpected error
        message = request.app.state.node.connections.exhausted(exc)
        return error_response(ApiError(503, message, retry_after_header(1)))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(OSError, on_os_error)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
