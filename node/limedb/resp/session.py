"""One client connection's state: protocol version, authentication, name, activity times."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from limedb.auth import Role

if TYPE_CHECKING:
    from limedb.resp.server import RespServer


@dataclass(slots=True, eq=False)
class Session:
    id: int
    server: RespServer
    addr: str
    laddr: str
    authenticated: bool
    # What the client may do: readwrite for the open default user, admin for the default user
    # authenticated with the RESP password, a user's own role after AUTH user pass.
    role: Role = Role.READWRITE
    user: str | None = None  # the user it authenticated as (None: the default user)
    proto: int = 2
    name: bytes | None = None
    lib_name: bytes | None = None
    lib_ver: bytes | None = None
    created: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    last_command: bytes = b"NULL"
    closing: bool = False
    # Between MULTI and EXEC: the queued requests, and whether one was refused (EXECABORT).
    multi: list[list[bytes]] | None = None
    multi_dirty: bool = False
    # WATCHed keys and the version timestamp each had then (0: absent).
    watched: dict[bytes, int] = field(default_factory=dict)
