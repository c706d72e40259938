"""Schemathesis hooks for the node's OpenAPI run (loaded through SCHEMATHESIS_HOOKS).

JSON Schema counts a string's length in characters while the node limits keys in UTF-8 bytes
(1..1024). A key of at most 1024 characters but more than 1024 bytes is valid to the schema and
rightly refused by the node; such cases say nothing about the API, so they are not generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_KEY_BYTES = 1024
MAX_KEY_CHARS = 1024


def _representable(key: Any) -> bool:
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        return True
    try:
        return len(key.encode("utf-8")) <= MAX_KEY_BYTES
    except UnicodeEncodeError:
        return True


@schemathesis.hook
def filter_path_parameters(context: Any, path_parameters: Any) -> bool:
    return not isinstance(path_parameters, dict) or _representable(path_parameters.get("key"))


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    keys = [body.get("key")]
    keys += [item.get("key") for item in body.get("put", []) if isinstance(item, dict)]
    keys += list(body.get("get", [])) if isinstance(body.get("get"), list) else []
    return all(_representable(k) for k in keys)
