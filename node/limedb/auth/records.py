"""User records and where they live: JSON values under the reserved key namespace.

Every key that starts with `RESERVED_PREFIX` (a NUL byte, then `limedb/`) belongs to LimeDB
itself: the front ends refuse to read, write or list it (so no existing client key can collide:
no LimeDB-compatible client or Redis tool sends a key that starts with NUL by accident), while
the cluster replicates, repairs and streams it like any other key. A user is one key,
`RESERVED_PREFIX + b"users/" + name`; `INITIALIZED_KEY` records that users were set up, after
which the admin routes need an admin user (or the cluster secret).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from limedb.auth.roles import Role

RESERVED_PREFIX = b"\x00limedb/"
USERS_PREFIX = RESERVED_PREFIX + b"users/"
INITIALIZED_KEY = RESERVED_PREFIX + b"auth/initialized"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_reserved(key: bytes) -> bool:
    """Whether `key` is LimeDB's own (clients may neither read, write nor list it)."""
    return key.startswith(RESERVED_PREFIX)


def check_name(name: str) -> str:
    """A valid user name; ValueError says what one may contain."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"a user name is 1 to 64 letters, digits, '_' or '-', got {name[:80]!r}")
    return name


def user_key(name: str) -> bytes:
    return USERS_PREFIX + name.encode()


def name_of(key: bytes) -> str | None:
    """The user name a key of the users namespace holds, None for any other key."""
    if not key.startswith(USERS_PREFIX):
        return None
    return key[len(USERS_PREFIX) :].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user: role, password hash (`scrypt$...`, limedb.auth.passwords) and the SHA-256 of
    its bearer token, if it has one."""

    name: str
    role: Role
    password: str | None = None
    token_sha256: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "role": self.role.label,
                "password": self.password,
                "token_sha256": self.token_sha256,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> UserRecord:
        body = orjson.loads(data)
        return cls(
            name=str(body["name"]),
            role=Role.parse(body["role"]),
            password=body.get("password"),
            token_sha256=body.get("token_sha256"),
        )
