"""The key path parameter the key routes of several modules declare, written once.

FastAPI documents the parameter (and checks its length) from `key_param`; the handler reads the
key itself from the raw path with `raw_key`, so percent-encoded bytes round-trip exactly
(limedb.api.validation.key_from_raw_path).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request

from limedb.api.validation import Limits, key_from_raw_path


def key_param(limits: Limits) -> Any:
    """The annotation of a `{key:path}` parameter: 1..max_key_bytes bytes of UTF-8."""
    return Annotated[
        str,
        Path(
            min_length=1,
            max_length=limits.max_key_bytes,
            description=f"the key, percent-encoded; 1..{limits.max_key_bytes} bytes of UTF-8",
        ),
    ]


def raw_key(request: Request, prefix: bytes, limits: Limits) -> bytes:
    """The key of a request whose raw path is `prefix` + the percent-encoded key."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    return key_from_raw_path(raw_path, len(prefix), limits)
