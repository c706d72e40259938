"""The users of the cluster: `/admin/users` (list, add, change a password, issue a token, remove).

Like every admin route these need an admin user, or the cluster secret (which is how the first
users are made when no `LIMEDB_BOOTSTRAP_ADMIN_PASSWORD` created `admin`): limedb.api.access
checks that before a route runs. Passwords arrive in the JSON body, never in a URL.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import Response

from limedb.api.errors import ApiError, not_ready
from limedb.api.state import NodeState
from limedb.auth import Role, UserStore, management
from limedb.auth.records import UserRecord


class NewUser(BaseModel):
    name: str = Field(description="1 to 64 letters, digits, '_' or '-'")
    role: str = Field(description="read | readwrite | admin")
    password: str = Field(description="at least 8 characters")


class NewPassword(BaseModel):
    password: str = Field(description="at least 8 characters")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _shown(record: UserRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role.label,
        "password": record.password is not None,
        "token": record.token_sha256 is not None,
    }


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(prefix="/admin/users", tags=["admin"])

    def store() -> UserStore:
        state.require_service()
        if state.auth is None:
            raise not_ready()
        return state.auth.store

    @router.get("", summary="Every user with its role (no password hashes)")
    async def list_users() -> Response:
        records = await management.listing(store())
        return _json({"users": [_shown(record) for record in records]})

    @router.post("", status_code=201, summary="Add a user (409 if the name is taken)")
    async def add_user(body: NewUser) -> Response:
        try:
            role = Role.parse(body.role)
            record = await management.add(store(), body.name, role, body.password)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except management.UserExists as exc:
            raise ApiError(409, str(exc)) from None
        return _json(_shown(record), 201)

    @router.put("/{name}/password", summary="Set a user's password")
    async def set_password(name: str, body: NewPassword) -> Response:
        try:
            await management.set_password(store(), name, body.password)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except management.NoSuchUser as exc:
            raise ApiError(404, str(exc)) from None
        return _json({"name": name, "password": True})

    @router.post("/{name}/token", summary="Issue a new bearer token (replaces the old one)")
    async def issue_token(name: str) -> Response:
        try:
            token = await management.issue_token(store(), name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except management.NoSuchUser as exc:
            raise ApiError(404, str(exc)) from None
        return _json({"name": name, "token": token})

    @router.delete("/{name}", summary="Remove a user (409 for the only admin)")
    async def remove_user(name: str) -> Response:
        try:
            await management.remove(store(), name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except management.NoSuchUser as exc:
            raise ApiError(404, str(exc)) from None
        except management.LastAdmin as exc:
            raise ApiError(409, str(exc)) from None
        return _json({"name": name, "removed": True})

    return router
