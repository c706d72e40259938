"""The RESP command table: names, arity, flags, and Redis's own error texts for misuse.

Command modules register handlers with `@command(...)`; `resolve` turns a request into the
handler to run or the exact error Redis would answer (unknown command, wrong number of
arguments, NOAUTH), so clients and their error handling behave as against a real Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limedb.auth import Role
from limedb.auth.records import RESERVED_PREFIX
from limedb.resp.encoding import RespError, Status

if TYPE_CHECKING:
    from limedb.resp.session import Session

Handler = Callable[["Session", list[bytes]], "Awaitable[Any] | Any"]

SYNTAX_ERROR = RespError("ERR syntax error")
NOAUTH = RespError("NOAUTH Authentication required.")
# Redis answers NOPERM to a user whose ACL does not allow a command. LimeDB's only user is
# `default`, and without a password anyone who reaches the port is that user, so a command that
# changes the node (not just the keys it names) is refused until a password is set.
NOPERM_ADMIN = (
    "NOPERM '{}' changes the node, not just the keys it names: it needs the RESP password "
    "(set --resp-password / LIMEDB_RESP_PASSWORD on the node, then AUTH)"
)
# Redis 7's replies to an ACL user denied a command or a key.
NOPERM_USER = "NOPERM User {} has no permissions to run the '{}' command"
NOPERM_KEY = RespError("NOPERM No permissions to access a key")


@dataclass(frozen=True, slots=True)
class Command:
    """One command: Redis arity (n = exactly n words, -n = at least n), flags, key positions."""

    name: str
    arity: int
    handler: Handler
    flags: tuple[str, ...]
    group: str
    summary: str
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    admin_subcommands: frozenset[bytes] = frozenset()

    @property
    def no_auth(self) -> bool:
        return "no-auth" in self.flags

    @property
    def writes(self) -> bool:
        return "write" in self.flags

    def reserved_key(self, argv: list[bytes]) -> bool:
        """Whether a key argument is in LimeDB's reserved namespace (limedb.auth.records)."""
        first = self.first_key
        if not first or len(argv) <= first:
            return False
        if self.last_key == first:
            return argv[first].startswith(RESERVED_PREFIX)
        last = self.last_key if self.last_key >= 0 else len(argv) + self.last_key
        return any(
            argv[i].startswith(RESERVED_PREFIX)
            for i in range(first, min(last, len(argv) - 1) + 1, self.step or 1)
        )

    def changes_node(self, argv: list[bytes]) -> bool:
        """Whether this call is an administrative one (the whole command, or its subcommand)."""
        if "node-admin" in self.flags:
            return True
        return len(argv) > 1 and argv[1].lower() in self.admin_subcommands

    def info(self) -> list[Any]:
        """The COMMAND INFO entry: name, arity, flags, first key, last key, step, and the empty
        ACL categories, tips, key specs and subcommands of Redis 7's format."""
        return [
            self.name.encode(),
            self.arity,
            [Status(flag) for flag in self.flags],
            self.first_key,
            self.last_key,
            self.step,
            [],
            [],
            [],
            [],
        ]

    def docs(self) -> dict[bytes, Any]:
        return {
            b"summary": self.summary.encode(),
            b"since": b"1.0.0",
            b"group": self.group.encode(),
        }


COMMANDS: dict[bytes, Command] = {}


def command(
    name: str,
    arity: int,
    *,
    flags: tuple[str, ...] = (),
    group: str = "string",
    summary: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    admin_subcommands: tuple[bytes, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a handler. Flag "node-admin" (or a subcommand in `admin_subcommands`) marks a
    call that changes the node: it needs a password-authenticated client (`resolve`)."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name.encode()] = Command(
            name,
            arity,
            handler,
            flags,
            group,
            summary or (handler.__doc__ or "").strip(),
            *keys,
            admin_subcommands=frozenset(admin_subcommands),
        )
        return handler

    return register


def wrong_arity(name: str) -> RespError:
    return RespError(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(argv: list[bytes]) -> RespError:
    # Redis quotes the first arguments, up to about 128 characters, after the command name.
    shown = ""
    for arg in argv[1:]:
        if len(shown) >= 128:
            break
        shown += "'" + arg.decode("utf-8", "replace")[: 128 - len(shown)] + "' "
    name = argv[0].decode("utf-8", "replace")[:128]
    return RespError(f"ERR unknown command '{name}', with args beginning with: {shown}")


def unknown_subcommand(argv: list[bytes]) -> RespError:
    sub = argv[1].decode("utf-8", "replace")[:128]
    return RespError(f"ERR unknown subcommand '{sub}'. Try {argv[0].decode().upper()} HELP.")


def resolve(
    argv: list[bytes], authenticated: bool, role: Role = Role.READWRITE, user: str | None = None
) -> Command | RespError:
    """The command to run for `argv`, or the error reply that refuses it. `role`: what the
    client may do (admin: the RESP password or an admin user); `user`: the user it
    authenticated as, None for the default user."""
    cmd = COMMANDS.get(argv[0]) or COMMANDS.get(argv[0].lower())
    if cmd is None:
        return unknown_command(argv)
    arity = cmd.arity
    # Redis checks the arity before authentication, so the errors come in this order.
    if (arity > 0 and len(argv) != arity) or (arity < 0 and len(argv) < -arity):
        return wrong_arity(cmd.name)
    if not authenticated and not cmd.no_auth:
        return NOAUTH
    if role is not Role.ADMIN:
        refusal = _refusal(cmd, argv, role, user)
        if refusal is not None:
            return refusal
    if cmd.first_key and cmd.reserved_key(argv):
        return NOPERM_KEY
    return cmd


def _refusal(cmd: Command, argv: list[bytes], role: Role, user: str | None) -> RespError | None:
    """NOPERM for a command beyond `role`: one that changes the node (admin), or a write
    (readwrite)."""
    if cmd.changes_node(argv):
        name = cmd.name + (
            "|" + argv[1].decode("utf-8", "replace").lower() if len(argv) > 1 else ""
        )
        name = name if cmd.admin_subcommands else cmd.name
        if user is None:
            return RespError(NOPERM_ADMIN.format(name))
        return RespError(NOPERM_USER.format(user, name))
    if role is Role.READ and cmd.writes:
        return RespError(NOPERM_USER.format(user or "default", cmd.name))
    return None
