"""OpenAPI response declarations and the Reply -> Response conversion for FastAPI handlers."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from limedb.api.operations import Reply
from limedb.api.schemas import ErrorBody

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
}


def error(description: str, retry_after: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ErrorBody, "description": description}
    if retry_after:
        doc["headers"] = _RETRY_AFTER
    return doc


BAD_REQUEST = {400: error("invalid input; the body says what was wrong")}
TOO_LARGE = {413: error("value or body larger than the configured limit")}
UNAVAILABLE = {
    503: error("not enough replicas, node starting, shutting down or overloaded", retry_after=True)
}
NOT_FOUND = {404: error("key not found")}


def text(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"text/plain": {"schema": {"type": "string"}, "example": example}},
    }


def to_response(reply: Reply) -> Response:
    response = Response(reply.body, reply.status)
    response.raw_headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
        *reply.headers,
    ]
    return response
