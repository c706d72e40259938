"""Python clients of a LimeDB node over its native HTTP routes: `Client` (sync), `AsyncClient`.

Values are bytes (str is encoded as UTF-8). A missing key raises `KeyNotFound`, a refused request
`BadRequest`, and a node that stays overloaded or short of replicas after the retries
`Unavailable`, missing or wrong credentials `Unauthorized` (401) and a role too low `Forbidden`
(403). 503 answers and refused connections are retried with exponential backoff, honouring
Retry-After. A client authenticates as a user with `user` and `password` (HTTP Basic) or with
a bearer `token`; admin calls may present the cluster secret instead. Depends only on httpx.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8484"


class LimeDBError(Exception):
    """Base of the client's errors."""


class KeyNotFound(LimeDBError, KeyError):
    """The key does not exist (or expired, or was deleted)."""

    def __str__(self) -> str:
        return f"key not found: {self.args[0]!r}" if self.args else "key not found"


class BadRequest(LimeDBError):
    """The node refused the request (400 / 413): the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(LimeDBError):
    """The node could not serve the request (503 / 429 / unreachable) after every retry."""


class Unauthorized(LimeDBError):
    """The node wants credentials (401): none were given, or the user or password is wrong."""


class Forbidden(LimeDBError):
    """The user's role does not allow the request (403), e.g. a `read` user writing."""


class Refused(LimeDBError):
    """An admin request the cluster refused (409): another transition runs, below RF, ..."""

    def __init__(self, message: str, running_transition: str | None = None) -> None:
        super().__init__(message)
        self.running_transition = running_transition


def _admin_result(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 409:
        try:
            body = response.json()
        except ValueError:
            body = {}
        raise Refused(_message(response), body.get("running_transition"))
    _raise_for(response)
    return response.json()


def _auth_headers(
    secret: str | None, user: str | None, password: str | None, token: str | None
) -> dict[str, str]:
    """The headers every request carries: the cluster secret, and Basic or Bearer credentials."""
    headers = {"x-cluster-secret": secret} if secret else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    elif user is not None:
        pair = f"{user}:{password or ''}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return headers


def _verify(ca: str | None) -> ssl.SSLContext | bool:
    """How the client checks an https node: against the CA bundle `ca` (a PEM file, e.g. the
    cluster's own CA), else against the system's trusted CAs."""
    return ssl.create_default_context(cafile=ca) if ca else True


def _key_path(key: str | bytes) -> str:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return "/v1/kv/" + quote(raw, safe="")


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text or f"HTTP {response.status_code}"


def _raise_for(response: httpx.Response, key: str | bytes | None = None) -> None:
    status = response.status_code
    if status < 300:
        return
    if status == 404 and key is not None:
        raise KeyNotFound(key)
    if status in (400, 404, 405, 413, 422):
        raise BadRequest(_message(response), status)
    if status in (429, 503):
        raise Unavailable(_message(response))
    if status == 401:
        raise Unauthorized(f"HTTP 401: {_message(response)}")
    if status == 403:
        raise Forbidden(f"HTTP 403: {_message(response)}")
    raise LimeDBError(f"HTTP {status}: {_message(response)}")


def _params(ttl: float | None = None, consistency: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if ttl is not None:
        params["ttl"] = ttl
    if consistency is not None:
        params["consistency"] = consistency
    return params


def _batch_body(get: Iterable[str], put: Mapping[str, str | bytes]) -> dict[str, Any]:
    return {
        "get": list(get),
        "put": [
            {"key": k, "value_base64": base64.b64encode(_as_bytes(v)).decode()}
            for k, v in put.items()
        ],
        "encoding": "base64",
    }


def _batch_values(response: httpx.Response) -> dict[str, bytes | None]:
    values = response.json()["values"]
    return {k: None if v is None else base64.b64decode(v) for k, v in values.items()}


class _Retry:
    """Backoff schedule shared by both clients."""

    def __init__(self, retries: int, backoff: float) -> None:
        self.retries = retries
        self.backoff = backoff

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        wait = self.backoff * (2**attempt) * (0.5 + random.random())
        if response is not None:
            try:
                wait = max(wait, min(float(response.headers.get("retry-after", 0)), 5.0))
            except ValueError:
                pass
        return min(wait, 5.0)

    def next_step(
        self, attempt: int, response: httpx.Response | None, error: Exception | None, url: str
    ) -> httpx.Response | float:
        """After try `attempt` got `response` (or `error`): the response to return, else how
        long to wait before trying again; raises Unavailable when `url` stayed unreachable."""
        if response is not None and response.status_code not in (429, 503):
            return response
        if attempt < self.retries:
            return self.delay(attempt, response)
        if response is None:
            raise Unavailable(f"{url} unreachable: {error}") from error
        return response


class Client:
    """A synchronous client of one node (any node of a cluster can serve any key)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.05,
        transport: httpx.BaseTransport | None = None,
        cluster_secret: str | None = None,
        ca: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers=_auth_headers(cluster_secret, user, password, token),
            verify=_verify(ca),
        )
        self._retry = _Retry(retries, backoff)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count():
            response, error = None, None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = exc
            step = self._retry.next_step(attempt, response, error, self.url)
            if isinstance(step, httpx.Response):
                return step
            time.sleep(step)
        raise AssertionError("unreachable")

    def get(self, key: str | bytes, *, consistency: str | None = None) -> bytes:
        response = self._request("GET", _key_path(key), params=_params(consistency=consistency))
        _raise_for(response, key)
        return response.content

    def set(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        ttl: float | None = None,
        consistency: str | None = None,
    ) -> int:
        """Store a value; returns its version timestamp."""
        response = self._request(
            "PUT",
            _key_path(key),
            content=_as_bytes(value),
            params=_params(ttl, consistency),
            headers={"content-type": "application/octet-stream"},
        )
        _raise_for(response)
        return int(response.json()["ts"])

    def delete(self, key: str | bytes, *, consistency: str | None = None) -> bool:
        """Delete a key; returns whether it existed."""
        response = self._request("DELETE", _key_path(key), params=_params(consistency=consistency))
        _raise_for(response)
        return bool(response.json()["deleted"])

    def batch(
        self, get: Iterable[str] = (), put: Mapping[str, str | bytes] | None = None
    ) -> dict[str, bytes | None]:
        """Write `put`, then read `get`; returns {key: value or None} for the keys read."""
        response = self._request("POST", "/v1/batch", json=_batch_body(get, put or {}))
        _raise_for(response)
        return _batch_values(response)

    def health(self) -> dict[str, Any]:
        response = self._request("GET", "/api/v1/health")
        _raise_for(response)
        return response.json()

    # Admin: ring transitions (any node of the ring accepts them). Each returns at once with
    # {"transition": {...}}; follow it with admin_status(). Refused (409) raises Refused.

    def join(self, node_url: str) -> dict[str, Any]:
        """Add a running node started with --await-join to the ring."""
        return _admin_result(self._request("POST", "/admin/join", json={"node_url": node_url}))

    def leave(self, node: str) -> dict[str, Any]:
        """Decommission a member (id or URL): hand off every range, then leave."""
        return _admin_result(self._request("POST", "/admin/leave", json={"node": node}))

    def replace(self, dead: str, new_url: str) -> dict[str, Any]:
        """A new, empty node takes over the ranges of a dead member."""
        body = {"dead_node": dead, "new_node_url": new_url}
        return _admin_result(self._request("POST", "/admin/replace", json=body))

    def set_replication_factor(self, rf: int) -> dict[str, Any]:
        body = {"rf": rf}
        return _admin_result(self._request("POST", "/admin/replication-factor", json=body))

    def admin_status(self) -> dict[str, Any]:
        """{"epoch", "members", "replication_factor", "transition": None or its progress}."""
        return _admin_result(self._request("GET", "/admin/status"))

    # Backups (docs/backup.md): the node asked coordinates; follow with backup_status().

    def backup_create(
        self,
        to: str,
        *,
        endpoint: str | None = None,
        credentials: dict[str, str] | None = None,
        region: str | None = None,
    ) -> dict[str, Any]:
        """Start a backup of the cluster to s3://bucket/prefix; returns {"job": {...}}."""
        body = {"to": to, "endpoint": endpoint, "credentials": credentials, "region": region}
        return _admin_result(self._request("POST", "/admin/backup", json=body))

    def backup_restore(
        self,
        source: str,
        *,
        backup: str | None = None,
        endpoint: str | None = None,
        credentials: dict[str, str] | None = None,
        merge: bool = False,
        region: str | None = None,
    ) -> dict[str, Any]:
        """Start restoring a backup (default: the newest) into this cluster."""
        body = {"from": source, "backup": backup, "endpoint": endpoint,
                "credentials": credentials, "merge": merge, "region": region}  # fmt: skip
        return _admin_result(self._request("POST", "/admin/restore", json=body))

    def backup_status(self) -> dict[str, Any]:
        """{"current": the running job or None, "last": the last finished one or None}."""
        return _admin_result(self._request("GET", "/admin/backup/status"))

    def repair(
        self, start: int | None = None, end: int | None = None, *, timeout: float = 3600.0
    ) -> dict[str, Any]:
        """Anti-entropy repair of the node's ranges (start..end tokens if given); waits for
        the run to finish (hence its own timeout) and returns its summary."""
        body = {"start": start, "end": end} if start is not None else None
        response = self._request("POST", "/admin/repair", json=body, timeout=timeout)
        return _admin_result(response)

    def verify(self, epoch: int | None = None, *, timeout: float = 3600.0) -> dict[str, Any]:
        """Verify the replicas of the ranges transition `epoch` moved (every range: None) and
        repair differences; waits for the run and returns its record (`result`: ok, repaired
        or failed)."""
        body = {"epoch": epoch} if epoch is not None else None
        return _admin_result(self._request("POST", "/admin/verify", json=body, timeout=timeout))

    def verification(self) -> dict[str, Any]:
        """{"last": the newest verification record or None, "running", "runs" by result}."""
        return _admin_result(self._request("GET", "/admin/verification"))

    # Users (an admin, or the cluster secret). Passwords travel in the body, never the URL.

    def users(self) -> list[dict[str, Any]]:
        """[{"name", "role", "password", "token"}] (the last two: whether it has one)."""
        return _admin_result(self._request("GET", "/admin/users"))["users"]

    def add_user(self, name: str, role: str, password: str) -> dict[str, Any]:
        body = {"name": name, "role": role, "password": password}
        return _admin_result(self._request("POST", "/admin/users", json=body))

    def set_password(self, name: str, password: str) -> dict[str, Any]:
        body = {"password": password}
        return _admin_result(self._request("PUT", f"/admin/users/{name}/password", json=body))

    def issue_token(self, name: str) -> str:
        """A new bearer token for `name` (its previous one stops working)."""
        return _admin_result(self._request("POST", f"/admin/users/{name}/token"))["token"]

    def remove_user(self, name: str) -> dict[str, Any]:
        return _admin_result(self._request("DELETE", f"/admin/users/{name}"))


class AsyncClient:
    """The asyncio twin of `Client`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.05,
        transport: httpx.AsyncBaseTransport | None = None,
        cluster_secret: str | None = None,
        ca: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers=_auth_headers(cluster_secret, user, password, token),
            verify=_verify(ca),
        )
        self._retry = _Retry(retries, backoff)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count():
            response, error = None, None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = exc
            step = self._retry.next_step(attempt, response, error, self.url)
            if isinstance(step, httpx.Response):
                return step
            await asyncio.sleep(step)
        raise AssertionError("unreachable")

    async def get(self, key: str | bytes, *, consistency: str | None = None) -> bytes:
        response = await self._request(
            "GET", _key_path(key), params=_params(consistency=consistency)
        )
        _raise_for(response, key)
        return response.content

    async def set(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        ttl: float | None = None,
        consistency: str | None = None,
    ) -> int:
        response = await self._request(
            "PUT",
            _key_path(key),
            content=_as_bytes(value),
            params=_params(ttl, consistency),
            headers={"content-type": "application/octet-stream"},
        )
        _raise_for(response)
        return int(response.json()["ts"])

    async def delete(self, key: str | bytes, *, consistency: str | None = None) -> bool:
        response = await self._request(
            "DELETE", _key_path(key), params=_params(consistency=consistency)
        )
        _raise_for(response)
        return bool(response.json()["deleted"])

    async def batch(
        self, get: Iterable[str] = (), put: Mapping[str, str | bytes] | None = None
    ) -> dict[str, bytes | None]:
        response = await self._request("POST", "/v1/batch", json=_batch_body(get, put or {}))
        _raise_for(response)
        return _batch_values(response)

    async def health(self) -> dict[str, Any]:
        response = await self._request("GET", "/api/v1/health")
        _raise_for(response)
        return response.json()

    async def join(self, node_url: str) -> dict[str, Any]:
        body = {"node_url": node_url}
        return _admin_result(await self._request("POST", "/admin/join", json=body))

    async def leave(self, node: str) -> dict[str, Any]:
        return _admin_result(await self._request("POST", "/admin/leave", json={"node": node}))

    async def replace(self, dead: str, new_url: str) -> dict[str, Any]:
        body = {"dead_node": dead, "new_node_url": new_url}
        return _admin_result(await self._request("POST", "/admin/replace", json=body))

    async def set_replication_factor(self, rf: int) -> dict[str, Any]:
        body = {"rf": rf}
        return _admin_result(await self._request("POST", "/admin/replication-factor", json=body))

    async def admin_status(self) -> dict[str, Any]:
        return _admin_result(await self._request("GET", "/admin/status"))

    async def repair(
        self, start: int | None = None, end: int | None = None, *, timeout: float = 3600.0
    ) -> dict[str, Any]:
        body = {"start": start, "end": end} if start is not None else None
        response = await self._request("POST", "/admin/repair", json=body, timeout=timeout)
        return _admin_result(response)

    async def verify(self, epoch: int | None = None, *, timeout: float = 3600.0) -> dict[str, Any]:
        body = {"epoch": epoch} if epoch is not None else None
        response = await self._request("POST", "/admin/verify", json=body, timeout=timeout)
        return _admin_result(response)

    async def verification(self) -> dict[str, Any]:
        return _admin_result(await self._request("GET", "/admin/verification"))

    async def users(self) -> list[dict[str, Any]]:
        return _admin_result(await self._request("GET", "/admin/users"))["users"]

    async def add_user(self, name: str, role: str, password: str) -> dict[str, Any]:
        body = {"name": name, "role": role, "password": password}
        return _admin_result(await self._request("POST", "/admin/users", json=body))

    async def set_password(self, name: str, password: str) -> dict[str, Any]:
        path = f"/admin/users/{name}/password"
        return _admin_result(await self._request("PUT", path, json={"password": password}))

    async def issue_token(self, name: str) -> str:
        path = f"/admin/users/{name}/token"
        return _admin_result(await self._request("POST", path))["token"]

    async def remove_user(self, name: str) -> dict[str, Any]:
        return _admin_result(await self._request("DELETE", f"/admin/users/{name}"))
