"""Backup routes: `POST /admin/backup` starts a cluster backup, `POST /admin/restore` a
restore, `GET /admin/backup/status` follows either (limedb.cluster.backup.agent; this node
coordinates the ones it was asked for). Every route needs the cluster secret or an admin
user, like every admin route (checked by limedb.api.access before the route runs). Storage credentials travel in the body (the CLI resolves them with boto3's
default chain); without them the node's own chain applies.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from limedb.api.errors import ApiError
from limedb.api.state import NodeState
from limedb.cluster.backup.agent import BackupNotFound, BackupRefused, Backups
from limedb.cluster.backup.location import Location, LocationError
from limedb.cluster.backup.store import StoreError


class Credentials(BaseModel):
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None


class BackupRequest(BaseModel):
    to: str = Field(description="s3://bucket/prefix")
    endpoint: str | None = Field(default=None, description="S3 endpoint URL (default: AWS)")
    region: str | None = None
    credentials: Credentials | None = None


class RestoreRequest(BaseModel):
    source: str = Field(alias="from", description="s3://bucket/prefix")
    backup: str | None = Field(default=None, description="backup id (default: the newest)")
    endpoint: str | None = None
    region: str | None = None
    credentials: Credentials | None = None
    merge: bool = Field(default=False, description="restore into a cluster holding data")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _credentials(given: Credentials | None) -> dict[str, str]:
    if given is None:
        return {}
    return {k: v for k, v in given.model_dump().items() if v}


def _location(url: str, endpoint: str | None, region: str | None) -> Location:
    try:
        return Location.parse(url, endpoint, region)
    except LocationError as exc:
        raise ApiError(400, str(exc)) from exc


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["backup"])

    def agent(request: Request) -> Backups:
        backups = state.require_service().backups
        if backups is None:
            raise ApiError(409, "this node takes no backups")
        return backups

    async def started(run: Any) -> Response:
        try:
            job = await run
        except BackupRefused as exc:
            raise ApiError(409, str(exc)) from exc
        except BackupNotFound as exc:
            raise ApiError(404, str(exc)) from exc
        except StoreError as exc:
            raise ApiError(502, f"object store: {exc}") from exc
        return _json({"job": job.to_json()}, 202)

    @router.post("/backup", status_code=202, summary="Back the cluster up to S3 (incremental)")
    async def backup(body: BackupRequest, request: Request) -> Response:
        backups = agent(request)
        location = _location(body.to, body.endpoint, body.region)
        return await started(backups.start_backup(location, _credentials(body.credentials)))

    @router.post("/restore", status_code=202, summary="Restore a backup into this cluster")
    async def restore(body: RestoreRequest, request: Request) -> Response:
        backups = agent(request)
        location = _location(body.source, body.endpoint, body.region)
        return await started(
            backups.start_restore(location, _credentials(body.credentials), body.backup, body.merge)
        )

    @router.get("/backup/status", summary="The running (or last) backup or restore")
    async def status(request: Request) -> Response:
        return _json(agent(request).status())

    return router
