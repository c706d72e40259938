"""Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, CLIENT, COMMAND,
CONFIG GET and INFO, answering the way Redis 7 does so that client libraries and tools
(redis-cli, redis-benchmark, redis-py) connect without special cases.
"""

from __future__ import annotations

import fnmatch
import hmac
import os
import platform
import time
from typing import Any

from limedb import __version__
from limedb.auth import Role
from limedb.resp.commands import (
    COMMANDS,
    SYNTAX_ERROR,
    command,
    unknown_subcommand,
)
from limedb.resp.encoding import OK, RespError, Status, Verbatim
from limedb.resp.session import Session

REDIS_VERSION = "7.0.0"  # the Redis release whose command set and replies this listener follows
WRONGPASS = RespError("WRONGPASS invalid username-password pair or user is disabled.")
NO_PASSWORD = RespError(
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)


@command("ping", -1, flags=("fast",), group="connection")
def ping(session: Session, argv: list[bytes]) -> Any:
    """Ping the server"""
    if len(argv) > 2:
        raise RespError("ERR wrong number of arguments for 'ping' command")
    return Status("PONG") if len(argv) == 1 else argv[1]


@command("echo", 2, flags=("fast",), group="connection")
def echo(session: Session, argv: list[bytes]) -> Any:
    """Echo the given string"""
    return argv[1]


@command("select", 2, flags=("fast",), group="connection")
def select(session: Session, argv: list[bytes]) -> Any:
    """Select the logical database (LimeDB has only database 0)"""
    try:
        index = int(argv[1])
    except ValueError:
        raise RespError("ERR value is not an integer or out of range") from None
    if index != 0:
        raise RespError("ERR DB index is out of range")
    return OK


@command("quit", -1, flags=("fast", "no-auth"), group="connection")
def quit_(session: Session, argv: list[bytes]) -> Any:
    """Close the connection"""
    session.closing = True
    return OK


async def _authenticate(session: Session, username: bytes, password: bytes) -> None:
    """AUTH as `username`: the default user against the RESP password (any password when
    there is none and users are not required, as Redis's `nopass` default user), any other
    user (and `default` when users are required without a RESP password) against the
    cluster's users (limedb.auth). WRONGPASS when it does not match."""
    limits = session.server.limits
    if username == b"default" and (limits.password is not None or not limits.auth_required):
        expected = limits.password
        if expected is not None and not hmac.compare_digest(password, expected.encode()):
            raise WRONGPASS
        session.authenticated = True
        session.user = None
        session.role = Role.ADMIN if expected is not None else Role.READWRITE
        return
    auth = session.server.auth
    try:
        name = username.decode("utf-8")
    except UnicodeDecodeError:
        raise WRONGPASS from None
    identity = await auth.password(name, password) if auth is not None else None
    if identity is None:
        raise WRONGPASS
    session.authenticated = True
    session.user = identity.name
    session.role = identity.role


@command("auth", -2, flags=("fast", "no-auth"), group="connection")
async def auth(session: Session, argv: list[bytes]) -> Any:
    """Authenticate the connection"""
    if len(argv) > 3:
        raise SYNTAX_ERROR
    if len(argv) == 2:
        limits = session.server.limits
        if limits.password is None and not limits.auth_required:
            raise NO_PASSWORD
        await _authenticate(session, b"default", argv[1])
    else:
        await _authenticate(session, argv[1], argv[2])
    return OK


def _valid_client_name(name: bytes) -> bool:
    return all(33 <= byte <= 126 for byte in name)


@command("hello", -1, flags=("fast", "no-auth"), group="connection")
async def hello(session: Session, argv: list[bytes]) -> Any:
    """Handshake: choose the protocol version, optionally authenticate and name the client"""
    proto = session.proto
    i = 1
    if len(argv) > 1:
        try:
            proto = int(argv[1])
        except ValueError:
            raise RespError("ERR Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
        i = 2
    name = None
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"auth" and i + 2 < len(argv):
            await _authenticate(session, argv[i + 1], argv[i + 2])
            i += 3
        elif opt == b"setname" and i + 1 < len(argv):
            name = argv[i + 1]
            if not _valid_client_name(name):
                raise RespError(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                )
            i += 2
        else:
            raise RespError(
                f"ERR Syntax error in HELLO option '{argv[i].decode('utf-8', 'replace')}'"
            )
    if not session.authenticated:
        raise RespError(
            "NOAUTH HELLO must be called with the client already authenticated, "
            "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
            "authenticate the client and select the RESP protocol version at the "
            "same time"
        )
    if name is not None:
        session.name = name
    session.proto = proto
    return {
        b"server": b"redis",
        b"version": REDIS_VERSION.encode(),
        b"proto": proto,
        b"id": session.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


# ---------------------------------------------------------------------------- CLIENT


def _client_line(session: Session, now: float) -> bytes:
    return (
        f"id={session.id} addr={session.addr} laddr={session.laddr} "
        f"name={(session.name or b'').decode('utf-8', 'replace')} "
        f"age={int(now - session.created)} idle={int(now - session.last_active)} db=0 "
        f"resp={session.proto} cmd={session.last_command.decode('utf-8', 'replace')} "
        f"lib-name={(session.lib_name or b'').decode('utf-8', 'replace')} "
        f"lib-ver={(session.lib_ver or b'').decode('utf-8', 'replace')}\n"
    ).encode()


@command("client", -2, flags=("fast",), group="connection")
def client(session: Session, argv: list[bytes]) -> Any:
    """Client connection commands: SETNAME, GETNAME, ID, INFO, LIST, SETINFO"""
    sub = argv[1].lower()
    args = len(argv)
    if sub == b"id" and args == 2:
        return session.id
    if sub == b"getname" and args == 2:
        return session.name
    if sub == b"setname" and args == 3:
        if not _valid_client_name(argv[2]):
            raise RespError(
                "ERR Client names cannot contain spaces, newlines or special characters."
            )
        session.name = argv[2] or None
        return OK
    if sub == b"setinfo" and args == 4:
        attr = argv[2].lower()
        if attr == b"lib-name":
            session.lib_name = argv[3]
        elif attr == b"lib-ver":
            session.lib_ver = argv[3]
        else:
            raise RespError(f"ERR Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
        return OK
    if sub == b"info" and args == 2:
        return Verbatim(_client_line(session, time.monotonic()))
    if sub == b"list" and args == 2:
        now = time.monotonic()
        return Verbatim(b"".join(_client_line(s, now) for s in session.server.sessions.values()))
    if sub in (b"id", b"getname", b"setname", b"setinfo", b"info", b"list"):
        raise RespError(f"ERR wrong number of arguments for 'client|{sub.decode()}' command")
    raise unknown_subcommand(argv)


# ---------------------------------------------------------------------------- COMMAND


@command("command", -1, flags=("loading", "stale"), group="server")
def command_(session: Session, argv: list[bytes]) -> Any:
    """Introspect the command table: COUNT, INFO, DOCS, LIST"""
    if len(argv) == 1:
        return [cmd.info() for cmd in COMMANDS.values()]
    sub = argv[1].lower()
    if sub == b"count" and len(argv) == 2:
        return len(COMMANDS)
    if sub == b"list" and len(argv) == 2:
        return [name for name in COMMANDS]
    if sub == b"info":
        names = argv[2:] or list(COMMANDS)
        return [
            COMMANDS[name.lower()].info() if name.lower() in COMMANDS else None for name in names
        ]
    if sub == b"docs":
        names = [name.lower() for name in argv[2:]] or list(COMMANDS)
        return {name: COMMANDS[name].docs() for name in names if name in COMMANDS}
    raise unknown_subcommand(argv)


# ---------------------------------------------------------------------------- CONFIG GET


def _config_values(session: Session) -> dict[str, str]:
    limits = session.server.limits
    return {
        "save": "",
        "appendonly": "yes" if limits.durability in ("sync", "periodic") else "no",
        "appendfsync": {"sync": "always", "periodic": "everysec"}.get(limits.durability, "no"),
        "databases": "1",
        "maxclients": str(limits.max_clients),
        "timeout": str(limits.idle_timeout_s),
        "proto-max-bulk-len": str(limits.max_bulk_bytes),
        "maxmemory": "0",
        "maxmemory-policy": "noeviction",
        "port": str(session.server.port),
        "bind": limits.host,
        "protected-mode": "yes" if limits.protected_mode else "no",
        "requirepass": "",
        "cluster-enabled": "no",
    }


@command(
    "config",
    -2,
    flags=("admin", "loading", "stale"),
    group="server",
    admin_subcommands=(b"set", b"resetstat", b"rewrite"),
)
def config(session: Session, argv: list[bytes]) -> Any:
    """CONFIG GET for the parameters clients ask about (read-only)"""
    sub = argv[1].lower()
    if sub == b"get":
        if len(argv) < 3:
            raise RespError("ERR wrong number of arguments for 'config|get' command")
        values = _config_values(session)
        found: dict[bytes, bytes] = {}
        for raw in argv[2:]:
            pattern = raw.decode("utf-8", "replace").lower()
            for name, value in values.items():
                if fnmatch.fnmatchcase(name, pattern):
                    found[name.encode()] = value.encode()
        return found
    if sub in (b"set", b"resetstat", b"rewrite"):
        raise RespError(
            f"ERR CONFIG {sub.decode().upper()} is not supported by LimeDB; "
            "configure the node with limedb serve options"
        )
    raise unknown_subcommand(argv)


@command("flushall", -1, flags=("write", "node-admin"), group="server")
def flushall(session: Session, argv: list[bytes]) -> Any:
    """Delete every key (refused: LimeDB deletes keys by name)"""
    raise RespError("ERR FLUSHALL is not supported by LimeDB: delete keys by name (DEL, UNLINK)")


@command("flushdb", -1, flags=("write", "node-admin"), group="server")
def flushdb(session: Session, argv: list[bytes]) -> Any:
    """Delete every key of the database (refused: LimeDB deletes keys by name)"""
    raise RespError("ERR FLUSHDB is not supported by LimeDB: delete keys by name (DEL, UNLINK)")


# ---------------------------------------------------------------------------- INFO


def _section_server(session: Session) -> list[str]:
    server = session.server
    uptime = int(time.monotonic() - server.started_at)
    return [
        f"redis_version:{REDIS_VERSION}",
        f"limedb_version:{__version__}",
        "redis_mode:standalone",
        f"os:{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits:64",
        f"process_id:{os.getpid()}",
        f"tcp_port:{server.port}",
        f"uptime_in_seconds:{uptime}",
        f"uptime_in_days:{uptime // 86400}",
        f"node_id:{server.service.node_id}",
        f"node_url:{server.service.node_url}",
    ]


def _section_clients(session: Session) -> list[str]:
    server = session.server
    return [
        f"connected_clients:{len(server.sessions)}",
        f"maxclients:{server.limits.max_clients}",
        "blocked_clients:0",
    ]


def _section_stats(session: Session) -> list[str]:
    stats = session.server.stats
    return [f"{name}:{value}" for name, value in stats.as_dict().items()]


def _section_keyspace(session: Session) -> list[str]:
    keys = session.server.service.local_count()
    return [f"db0:keys={keys},expires=0,avg_ttl=0"] if keys else []


def _section_cluster(session: Session) -> list[str]:
    # cluster_enabled:0 tells clients not to use Redis Cluster mode: any node serves any key.
    lines = ["cluster_enabled:0"]
    snapshot = session.server.service.cluster_view()
    return [
        *lines,
        f"limedb_members:{len(snapshot.members)}",
        f"limedb_ring_epoch:{snapshot.ring_epoch}",
    ]


SECTIONS = {
    "server": _section_server,
    "clients": _section_clients,
    "stats": _section_stats,
    "keyspace": _section_keyspace,
    "cluster": _section_cluster,
}


@command("info", -1, flags=("loading", "stale"), group="server")
def info(session: Session, argv: list[bytes]) -> Any:
    """Information and statistics: server, clients, stats, keyspace, cluster"""
    wanted = [arg.decode("utf-8", "replace").lower() for arg in argv[1:]]
    if not wanted or any(name in ("all", "everything", "default") for name in wanted):
        wanted = list(SECTIONS)
    parts = []
    for name in wanted:
        section = SECTIONS.get(name)
        if section is not None:
            lines = section(session)
            parts.append(
                "# " + name.capitalize() + "\r\n" + "".join(f"{line}\r\n" for line in lines)
            )
    return Verbatim("\r\n".join(parts).encode())
