"""Users kept as keys of a real node service (LocalService over the storage engine), read
through each node's cache: what a change made elsewhere does, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from limedb.auth import Authenticator, Role, UserStore, management
from limedb.cluster.local import LocalService
from limedb.storage import Engine, EngineOptions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LocalService]:
    engine = Engine.open(tmp_path / "data", EngineOptions(durability="none"))
    service = LocalService(engine, node_id="n1", node_url="http://n1:8484", vnodes=4)
    asyncio.run(service.start())
    yield service
    engine.close()


def test_a_change_made_through_another_node_is_seen_once_the_cache_expires(service) -> None:
    clock = Clock()
    here = UserStore(service, ttl_s=1.0, clock=clock)  # the node that makes the changes
    there = UserStore(service, ttl_s=1.0, clock=clock)  # another node's cache, same data
    auth_there = Authenticator(there)

    async def scenario() -> None:
        await management.add(here, "alice", Role.READ, "first password")
        alice = await auth_there.password("alice", b"first password")
        assert alice is not None and alice.role is Role.READ
        assert await auth_there.password("alice", b"wrong password") is None
        await management.set_password(here, "alice", "second password")
        # Within the cache time the other node still knows the old hash...
        assert await auth_there.password("alice", b"first password") is not None
        clock.now += 1.5
        # ...after it, only the new password works there, remembered verification included.
        assert await auth_there.password("alice", b"first password") is None
        assert await auth_there.password("alice", b"second password") is not None
        await management.remove(here, "alice")
        clock.now += 1.5
        assert await auth_there.password("alice", b"second password") is None

    asyncio.run(scenario())


def test_bootstrap_creates_admin_once_and_never_again(service) -> None:
    store = UserStore(service, ttl_s=0.0)
    auth = Authenticator(store)

    async def scenario() -> None:
        assert not await store.initialized()
        assert await management.bootstrap(store, "first admin pw")
        assert await store.initialized()
        await management.set_password(store, "admin", "changed admin pw")
        # A restart with the bootstrap password still set must not reset the admin.
        assert not await management.bootstrap(UserStore(service, ttl_s=0.0), "first admin pw")
        assert await auth.password("admin", b"first admin pw") is None
        admin = await auth.password("admin", b"changed admin pw")
        assert admin is not None and admin.role is Role.ADMIN
        # The only admin cannot be removed: with users set up, nothing else opens the admin
        # routes. Once a second admin exists, the first can go.
        with pytest.raises(management.LastAdmin):
            await management.remove(store, "admin")
        await management.add(store, "carol", Role.ADMIN, "carols password")
        await management.remove(store, "admin")
        assert await store.initialized()  # users were set up: the admin routes stay closed
        assert [r.name for r in await management.listing(store)] == ["carol"]
        with pytest.raises(management.LastAdmin):
            await management.remove(store, "carol")

    asyncio.run(scenario())


def test_names_are_unique_and_tokens_replace_each_other(service) -> None:
    store = UserStore(service, ttl_s=0.0)
    auth = Authenticator(store)

    async def scenario() -> None:
        await management.add(store, "bob", Role.READWRITE, "bobs password")
        with pytest.raises(management.UserExists):
            await management.add(store, "bob", Role.ADMIN, "another password")
        with pytest.raises(management.NoSuchUser):
            await management.set_password(store, "nobody", "whatever pw")
        first = await management.issue_token(store, "bob")
        assert (await auth.token(first)) is not None
        second = await management.issue_token(store, "bob")
        assert await auth.token(first) is None
        bob = await auth.token(second)
        assert bob is not None and bob.name == "bob" and bob.role is Role.READWRITE
        assert await auth.token("bob." + "A" * 43) is None
        assert await auth.token("not-a-token") is None
        assert [(r.name, r.role) for r in await management.listing(store)] == [
            ("bob", Role.READWRITE)
        ]

    asyncio.run(scenario())
