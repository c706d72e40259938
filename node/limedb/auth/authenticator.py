"""Who a credential proves: a user name and password, or a bearer token, to an `Identity`.

Checking a password is a scrypt hash (tens of milliseconds, off the event loop), far too slow
for every request of a client that sends Basic credentials each time. So a password that was
verified once is remembered as an HMAC under a key that lives only in this process, next to the
stored hash it matched: the same password for the same, unchanged hash is accepted at the cost
of one HMAC. A changed password or a removed user no longer matches once the store's copy is
refreshed. Bearer tokens are 32 random bytes, so a SHA-256 of them (stored in the user record)
is enough: nobody can guess their way back from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from limedb.auth import passwords
from limedb.auth.records import NAME_PATTERN
from limedb.auth.roles import Role
from limedb.auth.store import UserStore

TOKEN_SEPARATOR = "."
MAX_REMEMBERED = 4096
# scrypt runs in threads, at most this many at once: a flood of wrong passwords (each a full
# hash) then waits here instead of taking every thread of the loop's default executor, which
# the node also uses for storage scans.
HASHING_AT_ONCE = 2


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the user's name and role."""

    name: str
    role: Role


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str) -> str:
    """A bearer token of user `name`: `<name>.<43 url-safe characters>`."""
    return f"{name}{TOKEN_SEPARATOR}{secrets.token_urlsafe(32)}"


class Authenticator:
    """Checks credentials against the users in the cluster (`UserStore`)."""

    def __init__(self, store: UserStore) -> None:
        self.store = store
        self._key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], str] = {}
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)

    async def password(self, name: str, password: bytes) -> Identity | None:
        """The user `name` if `password` is theirs, else None."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        record = await self.store.lookup(name)
        if record is None or record.password is None:
            return None
        remembered = (name, hmac.new(self._key, password, hashlib.sha256).digest())
        if self._verified.get(remembered) == record.password:
            return Identity(name, record.role)
        try:
            stored = passwords.PasswordHash.decode(record.password)
        except ValueError:
            return None
        async with self._hashing:
            matches = await asyncio.to_thread(passwords.verify, password, stored)
        if not matches:
            return None
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified[remembered] = record.password
        return Identity(name, record.role)

    async def token(self, token: str) -> Identity | None:
        """The user a bearer token belongs to, else None."""
        name, separator, _ = token.partition(TOKEN_SEPARATOR)
        if not separator or not NAME_PATTERN.fullmatch(name):
            return None
        record = await self.store.lookup(name)
        if record is None or record.token_sha256 is None:
            return None
        if not hmac.compare_digest(token_digest(token).encode(), record.token_sha256.encode()):
            return None
        return Identity(name, record.role)
