"""Changing users: add, change a password, issue a token, remove, list, and the first admin.

What `/admin/users` and `limedb user ...` do. Changes read the user from the cluster (never a
cached copy) and write at quorum. Two admins adding the same name at
the same moment through different nodes both succeed and the later write wins, as for any key
(docs/security.md); changes of different users never interfere, each being its own key.
"""

from __future__ import annotations

import asyncio
import logging

from limedb.auth import passwords
from limedb.auth.authenticator import new_token, token_digest
from limedb.auth.records import UserRecord, check_name
from limedb.auth.roles import Role
from limedb.auth.store import UserStore
from limedb.cluster.service import ServiceError

log = logging.getLogger("limedb.auth")

BOOTSTRAP_ADMIN = "admin"


class UserExists(Exception):
    """`add` of a name that is taken."""


class LastAdmin(Exception):
    """`remove` of the only user with role admin: nothing could manage the cluster after it
    (the cluster secret no longer opens the admin routes once users exist)."""


class NoSuchUser(Exception):
    """A change of a user that does not exist."""


async def _hash(password: str) -> str:
    raw = passwords.check_password(password)
    return (await asyncio.to_thread(passwords.hash_password, raw)).encode()


async def add(store: UserStore, name: str, role: Role, password: str) -> UserRecord:
    """A new user; UserExists if the name is taken, ValueError for a bad name or password."""
    check_name(name)
    hashed = await _hash(password)
    if await store.fresh(name) is not None:
        raise UserExists(f"user {name} exists")
    record = UserRecord(name, role, hashed)
    await store.save(record)
    return record


async def set_password(store: UserStore, name: str, password: str) -> None:
    check_name(name)
    hashed = await _hash(password)
    record = await store.fresh(name)
    if record is None:
        raise NoSuchUser(f"no user {name}")
    await store.save(UserRecord(name, record.role, hashed, record.token_sha256))


async def issue_token(store: UserStore, name: str) -> str:
    """A new bearer token for `name` (it replaces the one it had)."""
    check_name(name)
    record = await store.fresh(name)
    if record is None:
        raise NoSuchUser(f"no user {name}")
    token = new_token(name)
    await store.save(UserRecord(name, record.role, record.password, token_digest(token)))
    return token


async def remove(store: UserStore, name: str) -> None:
    check_name(name)
    record = await store.fresh(name)
    if record is None:
        raise NoSuchUser(f"no user {name}")
    if record.role is Role.ADMIN:
        others = [r for r in await listing(store) if r.role is Role.ADMIN and r.name != name]
        if not others:
            raise LastAdmin(
                f"{name} is the only admin: add another admin user before removing it "
                "(the cluster secret no longer opens the admin routes once users exist)"
            )
    await store.remove(name)


async def listing(store: UserStore) -> list[UserRecord]:
    """Every user, by name."""
    names = await store.names()
    records = await asyncio.gather(*(store.fresh(name) for name in names))
    return [record for record in records if record is not None]


async def bootstrap(store: UserStore, password: str) -> bool:
    """Create user `admin` with `password` if users were never set up; whether it did."""
    if await store.initialized_at_quorum():
        return False
    await store.save(UserRecord(BOOTSTRAP_ADMIN, Role.ADMIN, await _hash(password)))
    log.info("created the first admin user %r (LIMEDB_BOOTSTRAP_ADMIN_PASSWORD)", BOOTSTRAP_ADMIN)
    return True


async def bootstrap_until_done(store: UserStore, password: str, retry_s: float = 1.0) -> None:
    """Bootstrap, retrying while the cluster cannot answer at quorum (peers still starting)."""
    while True:
        try:
            await bootstrap(store, password)
            return
        except ServiceError as exc:
            log.info("first admin not created yet (%s); retrying", exc)
            await asyncio.sleep(retry_s)
        except ValueError as exc:  # (the CLI refuses such a password before the node starts)
            log.error("first admin not created: %s", exc)
            return
