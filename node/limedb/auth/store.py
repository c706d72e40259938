"""The users of the cluster, read through a short-lived cache of each user's key.

Users are keys of the reserved namespace (limedb.auth.records), written and read through the
node's `KeyValueService` at quorum, so they are replicated, hinted,
repaired and streamed like data, and survive any node's restart. Each node caches what it read
for `ttl_s`: a change made through another node is seen here within that time, a change made
through this node at once. A read that fails (no quorum) keeps using the copy it had, so a
partition does not lock out users who were authenticated a moment ago.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from limedb.auth.records import INITIALIZED_KEY, USERS_PREFIX, UserRecord, name_of, user_key
from limedb.cluster.service import Consistency, KeyValueService, ServiceError

log = logging.getLogger("limedb.auth")
# Users are read and written at quorum whatever the node's default levels, so a change that was
# acknowledged is what every later read finds.
QUORUM = Consistency.QUORUM


@dataclass(slots=True)
class _Cached:
    record: UserRecord | None
    fetched: float


class UserStore:
    """Read, cache and change the users kept in the cluster."""

    def __init__(
        self,
        service: KeyValueService,
        ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.ttl_s = ttl_s
        self.clock = clock
        self._users: dict[str, _Cached] = {}
        self._initialized = False  # once users exist, they always have (the marker stays)
        self._initialized_checked = float("-inf")

    async def lookup(self, name: str) -> UserRecord | None:
        """The user `name` (None if there is none), from the cache while it is fresh."""
        now = self.clock()
        cached = self._users.get(name)
        if cached is not None and now - cached.fetched < self.ttl_s:
            return cached.record
        try:
            result = await self.service.get(user_key(name), QUORUM)
        except ServiceError:
            if cached is None:
                raise
            log.warning("could not refresh user %s; using the copy read before", name)
            return cached.record
        record = UserRecord.decode(result.value) if result.value is not None else None
        if len(self._users) > 10_000:
            self._users.clear()  # bounded: names that do not exist are cached too
        self._users[name] = _Cached(record, now)
        return record

    async def initialized(self) -> bool:
        """Whether users were ever set up in this cluster (cached; True is final)."""
        if self._initialized:
            return True
        now = self.clock()
        if now - self._initialized_checked < self.ttl_s:
            return False
        try:
            result = await self.service.get(INITIALIZED_KEY, QUORUM)
        except ServiceError:
            # No quorum (peers down or still starting): the marker is written at quorum and
            # never removed, so any replica that has it answers right; one that lacks it may
            # be behind, which only matters on a node without a cluster secret (--insecure).
            try:
                result = await self.service.get(INITIALIZED_KEY, Consistency.ONE)
            except ServiceError as exc:
                # No replica of the marker answers (with RF=1 its one owner is down): what
                # this process saw last stands (True is final, above), asked again after the
                # cache's ttl like any answer. A node that never saw users keeps taking the
                # cluster secret on the admin routes, so the cluster stays manageable; whoever
                # holds the secret can act as a node on the internal port anyway
                # (docs/security.md).
                log.warning("cannot read whether users exist (%s); as last seen: none", exc)
                self._initialized_checked = now
                return False
        self._initialized = result.value is not None
        self._initialized_checked = now
        return self._initialized

    async def initialized_at_quorum(self) -> bool:
        """Whether users were ever set up, read at quorum only (ServiceError otherwise): what
        the first admin's creation decides on, so that a replica that missed the marker
        never makes a node create `admin` again over a changed password."""
        if self._initialized:
            return True
        result = await self.service.get(INITIALIZED_KEY, QUORUM)
        self._initialized = result.value is not None
        return self._initialized

    async def mark_initialized(self) -> None:
        if not self._initialized:
            await self.service.put(INITIALIZED_KEY, b"1", consistency=QUORUM)
            self._initialized = True

    async def save(self, record: UserRecord) -> None:
        """Create or replace a user (the users namespace counts as set up from then on)."""
        await self.mark_initialized()
        await self.service.put(user_key(record.name), record.encode(), consistency=QUORUM)
        self._users[record.name] = _Cached(record, self.clock())

    async def remove(self, name: str) -> bool:
        """Delete a user; whether it existed."""
        existed = await self.service.delete(user_key(name), QUORUM)
        self._users[name] = _Cached(None, self.clock())
        return existed

    async def fresh(self, name: str) -> UserRecord | None:
        """The user `name` read from the cluster now (for changes: never a cached copy)."""
        self._users.pop(name, None)
        return await self.lookup(name)

    async def names(self) -> list[str]:
        """Every user's name (asks every member: a scan of the cluster's keys)."""
        keys = await self.service.cluster_keys(lambda key: key.startswith(USERS_PREFIX))
        return sorted(name for key in keys if (name := name_of(key)) is not None)
