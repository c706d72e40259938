"""One client connection's state: protocol version, authentication, name, activity times."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limedb.resp.server import RespServer


@dataclass(slots=True, eq=False)
class Session:
    id: int
    server: RespServer
    addr: str
    laddr: str
    authenticated: bool
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
