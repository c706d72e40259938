"""Admin routes: ring transitions (join, leave, replace, replication factor), status, repair,
verification.

Any node takes a change and hands it to the one node that proposes changes
(limedb.cluster.proposals), which validates and proposes it; the cluster then drives it
(limedb.cluster.transition_driver). The route relays the proposer's answer: 202 with the
transition as soon as it is proposed (and known to be the one that runs), and
`GET /admin/status` follows it. A refused change is 409 with the reason (the running
transition's id, a leave below the replication factor); the same change asked again while it
runs answers 202 with it (a retry is not an error). 503 with Retry-After when no ring member is
alive as the receiving node sees it.
Who may call them is checked before any route runs (limedb.api.access): an admin user, or the
cluster secret in the `X-Cluster-Secret` header, every route except `GET /admin/node`: a join asks the new node who it is without sending the secret, with a
random challenge, and the node proves that it holds the secret with an HMAC of the challenge,
its id and its URL (limedb.secret.node_proof). So a join only ever adds a node of this cluster,
redirects are never followed, and the secret never leaves for an address that did not prove it.
"""

from __future__ import annotations

import secrets as token_source
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from limedb.api.errors import ApiError, retry_after_header
from limedb.api.state import NodeState
from limedb.auth.records import is_reserved
from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.proposals import ProposerUnavailable
from limedb.cluster.repair import RepairRefused
from limedb.cluster.service import NotClustered
from limedb.cluster.transitions import Change
from limedb.cluster.verifier import VerificationRefused
from limedb.secret import node_proof, proof_matches

SECRET_HEADER = "x-cluster-secret"
IDENTIFY_MAX_BYTES = 64 * 1024  # an identity is a few hundred bytes; a stranger may send more


class JoinRequest(BaseModel):
    node_url: str = Field(description="URL of a running node started with --await-join")


class LeaveRequest(BaseModel):
    node: str = Field(description="node id or URL of the member to decommission")


class ReplaceRequest(BaseModel):
    dead_node: str = Field(description="node id or URL of the dead member")
    new_node_url: str = Field(description="URL of the running, empty replacement node")


class RfRequest(BaseModel):
    rf: int = Field(ge=1, le=15, description="the new replication factor")


class VerifyRequest(BaseModel):
    epoch: int | None = Field(
        default=None, ge=1, description="verify the ranges this epoch's transition moved"
    )


class RepairRequest(BaseModel):
    start: int | None = Field(default=None, ge=0, description="first token of the range")
    end: int | None = Field(default=None, ge=0, description="last token of the range")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def build_router(state: NodeState) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])
    secret = state.config.cluster_secret

    def resolve(node: str) -> str:
        """A member's id from its id or URL."""
        record = state.require_service().ring_record()
        members = record.all_members() if record is not None else {}
        if node in members:
            return node
        wanted = node.rstrip("/")
        for node_id, url in members.items():
            if url == wanted:
                return node_id
        raise ApiError(409, f"{node} is not a ring member (members: {', '.join(members)})")

    async def identify(url: str) -> dict:
        """Ask a (new) node who it is; it must prove that it holds this cluster's secret."""
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ApiError(400, f"node_url must be an http(s) URL, got {url!r}")
        challenge = token_source.token_hex(16)
        try:
            async with (
                httpx.AsyncClient(
                    timeout=3.0,
                    follow_redirects=False,
                    trust_env=False,
                    verify=state.peer_verify(),
                ) as client,
                client.stream("GET", f"{url}/admin/node", params={"challenge": challenge}) as r,
            ):
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > IDENTIFY_MAX_BYTES:
                        raise ApiError(409, f"{url} does not answer as a LimeDB node")
                status = r.status_code
        except httpx.HTTPError as exc:
            raise ApiError(409, f"cannot reach {url}: {exc}") from exc
        if status != 200:
            raise ApiError(409, f"{url} answered {status}: {body[:200].decode(errors='replace')}")
        try:
            info = orjson.loads(body)
            node_id, node_url = str(info["node_id"]), str(info["url"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ApiError(409, f"{url} does not answer as a LimeDB node") from exc
        if secret is not None and not proof_matches(
            secret, challenge, node_id, node_url, info.get("proof")
        ):
            raise ApiError(
                409, f"{url} did not prove that it belongs to this cluster (wrong cluster secret?)"
            )
        return info

    async def propose(change: Change) -> Response:
        try:
            outcome = await state.require_service().propose(change)
        except NotClustered as exc:
            raise ApiError(409, str(exc)) from exc
        except ProposerUnavailable as exc:
            raise ApiError(503, str(exc), retry_after_header(1.0)) from exc
        if outcome.accepted:
            return _json({"transition": outcome.transition}, 202)
        body = {"error": outcome.error}
        if outcome.running_id:
            body["running_transition"] = outcome.running_id
        return _json(body, 409)

    @router.get("/node", summary="Who this node is (used by a join to learn the new node's id)")
    async def node(challenge: str | None = None) -> Response:
        """Open without the secret (it says what /api/v1/cluster/state says); with a
        `challenge`, `proof` shows that this node holds the cluster secret."""
        if challenge is not None and not 16 <= len(challenge) <= 128:
            raise ApiError(400, "challenge must be 16 to 128 characters")
        service = state.require_service()
        record = service.ring_record()
        body: dict[str, Any] = {
            "node_id": service.node_id,
            "url": service.node_url,
            "epoch": record.ring.epoch if record is not None else 0,
            "in_ring": record is not None and service.node_id in record.ring,
        }
        if challenge is not None and secret is not None:
            body["proof"] = node_proof(secret, challenge, service.node_id, service.node_url)
        return _json(body)

    @router.get("/keys", summary="This node's own live keys after a cursor (no values)")
    async def keys(request: Request, after: str | None = None, limit: int = 1000) -> Response:
        """A cursor-paged listing for checks and tooling: `next` is the `after` of the next
        page (None at the end). Keys in ranges this node handed off are not listed, nor
        LimeDB's own (the reserved namespace: users)."""
        if not 1 <= limit <= 10_000:
            raise ApiError(400, f"limit must be between 1 and 10000, got {limit}")
        service = state.require_service()
        cursor = after.encode() if after is not None else None
        items = service.local_items(cursor, limit)
        names = [key.decode("utf-8", "replace") for key, _ in items if not is_reserved(key)]
        last = items[-1][0].decode("utf-8", "replace") if len(items) == limit else None
        return _json({"keys": names, "next": last})

    @router.get("/status", summary="Ring epoch, members and the running transition's progress")
    async def status(request: Request) -> Response:
        return _json(state.require_service().admin_status())

    @router.post("/join", status_code=202, summary="Add a running, empty node to the ring")
    async def join(body: JoinRequest, request: Request) -> Response:
        info = await identify(body.node_url)
        return await propose(Change.join(str(info["node_id"]), str(info["url"])))

    @router.post("/leave", status_code=202, summary="Decommission a member: hand off, then leave")
    async def leave(body: LeaveRequest, request: Request) -> Response:
        return await propose(Change.leave(resolve(body.node)))

    @router.post("/replace", status_code=202, summary="A new node takes over a dead member")
    async def replace(body: ReplaceRequest, request: Request) -> Response:
        dead = resolve(body.dead_node)
        info = await identify(body.new_node_url)
        return await propose(Change.replace(dead, str(info["node_id"]), str(info["url"])))

    @router.post(
        "/replication-factor", status_code=202, summary="Change the replication factor (streams)"
    )
    async def replication_factor(body: RfRequest, request: Request) -> Response:
        return await propose(Change.set_rf(body.rf))

    @router.post("/repair", summary="Anti-entropy repair now (Merkle trees)")
    async def repair(request: Request, body: RepairRequest | None = None) -> Response:
        token_range = None
        if body is not None and (body.start is not None or body.end is not None):
            start = body.start or 0
            end = MAX_TOKEN if body.end is None else body.end
            if start > end or end > MAX_TOKEN:
                raise ApiError(400, f"token range {start}..{end} must be 0 <= start <= end < 2**64")
            token_range = (start, end)
        try:
            return _json(await state.require_service().repair(token_range))
        except (RepairRefused, NotClustered) as exc:
            raise ApiError(409, str(exc)) from exc

    @router.post("/verify", summary="Compare every replica's Merkle roots, repair, report")
    async def verify(request: Request, body: VerifyRequest | None = None) -> Response:
        """Runs now and answers the record: `result` ok (every replica agreed), repaired, or
        failed (a range could not be compared: `replicasUnreachable`, `error`)."""
        epoch = body.epoch if body is not None else None
        try:
            return _json(await state.require_service().verify(epoch))
        except (VerificationRefused, NotClustered) as exc:
            raise ApiError(409, str(exc)) from exc

    @router.get("/verification", summary="The newest verification this node knows of")
    async def verification(request: Request) -> Response:
        """The newest record (whichever node ran it: each pushes its record to every member),
        the run in progress here, and this node's counts of runs by result."""
        status = state.require_service().admin_status().get("verification")
        if status is None:
            raise ApiError(409, "this node runs alone (started without seeds): nothing to verify")
        return _json(status)

    return router
