"""The application factory: FastAPI with every router, behind the raw-ASGI fast path.

(In the node process, `server.py` also gives uvicorn the wire-level protocol of `wire.py`,
which answers the hot routes before they become ASGI requests at all.)

`create_app(service, config)` returns an ASGI application (a `FastPath` whose `.app` is the
FastAPI app and `.state` the shared `NodeState`). `service` may be None while storage is still
recovering; `attach_service` plugs it in when it is ready. Other modules mount their own routers
(internal replication, admin) with `extra_routers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI

import limedb
from limedb.api import admin, backup, clusterinfo, dashboard, native, probes, public, users
from limedb.api.errors import install_handlers
from limedb.api.fastpath import FastPath
from limedb.api.state import NodeState
from limedb.api.validation import Limits
from limedb.auth import Authenticator, UserStore
from limedb.cluster.service import NodeService
from limedb.config import Config

DESCRIPTION = """\
LimeDB node API. The `/api/v1/*` routes are compatible with the original LimeDB clients;
`/v1/*` are native routes (raw bytes, TTL, per-request consistency, batches). Every error is
JSON `{"error": "..."}`; 503 responses carry `Retry-After`.
"""


def create_app(
    service: NodeService | None,
    config: Config,
    *,
    extra_routers: Iterable[APIRouter] = (),
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] | None = None,
) -> FastPath:
    limits = Limits(config.max_key_bytes, config.max_value_bytes, config.max_batch_items)
    state = NodeState(config=config, limits=limits, service=service)
    if service is not None:
        state.auth = authenticator_for(service, config)
    api = FastAPI(
        title="LimeDB",
        version=limedb.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    api.state.node = state
    install_handlers(api)
    api.include_router(public.build_router(state))
    api.include_router(clusterinfo.build_router(state))
    api.include_router(native.build_router(state))
    api.include_router(probes.build_router(state))
    api.include_router(admin.build_router(state))
    api.include_router(backup.build_router(state))
    api.include_router(users.build_router(state))
    api.include_router(dashboard.build_router(state))
    for router in extra_routers:
        api.include_router(router)
    return FastPath(api, state)


def authenticator_for(service: NodeService, config: Config) -> Authenticator:
    """Credentials checked against the users `service` holds (limedb.auth)."""
    store = UserStore(service, ttl_s=config.auth_cache_ms / 1000)
    return Authenticator(store)


def attach_service(app: FastPath, service: NodeService) -> None:
    """Start serving keys from `service` (after storage recovery finished)."""
    app.state.auth = authenticator_for(service, app.state.config)
    app.state.service = service
    budget = service.background
    if budget is not None:
        # Background work (streaming, repair, hint replay) yields while clients queue.
        admission = app.state.admission
        budget.pressure = lambda: admission.waiting > 0
