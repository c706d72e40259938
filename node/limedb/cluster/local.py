"""The single-node KeyValueService: user keys over the local storage engine, no replication.

Versions are stamped with this node's hybrid logical clock, keys are stored token-prefixed
(limedb.cluster.keys) so the on-disk layout is already the one the cluster ring streams, and a
TTL becomes an absolute `expires_at_ms`. The cluster coordinator replaces this service when a
node has peers; the HTTP layer cannot tell the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from limedb.cluster.atomic import Action, KeyLocks, Outcome, ReadModifyWrite, apply_locally
from limedb.cluster.keys import storage_key, user_key
from limedb.cluster.ring.placement import vnode_tokens
from limedb.cluster.service import (
    Consistency,
    NotClustered,
    ReadResult,
    ReplicaHolding,
    ReplicaReport,
    Unavailable,
    refused_write,
)
from limedb.cluster.status import announced
from limedb.cluster.transaction import Step, StepResult, Watch, run_batch
from limedb.cluster.view import ClusterView, MemberView
from limedb.config import default
from limedb.hlc import HLC, millis_of, wall_millis
from limedb.storage.errors import DiskFullError, StorageError

if TYPE_CHECKING:
    from limedb.cluster.backup.agent import Backups
    from limedb.cluster.proposals import Proposal
    from limedb.cluster.ring.record import RingRecord
    from limedb.cluster.transitions import Change

ALONE = "this node runs alone (started without seeds): it has no ring to change"


class StorageVersion(Protocol):
    value: bytes | None
    ts: int
    tombstone: bool
    expires_at_ms: int | None


class StorageEngine(Protocol):
    """The part of `limedb.storage.Engine` this service relies on."""

    # The engine's clock: it observed every stored timestamp at recovery, so the versions this
    # service stamps with it order after everything the engine holds.
    hlc: HLC

    def get_version(self, key: bytes) -> StorageVersion | None: ...

    async def put_async(
        self, key: bytes, value: bytes, *, ts: int | None = None, expires_at_ms: int | None = None
    ) -> bool: ...

    async def delete_async(self, key: bytes, *, ts: int | None = None) -> bool: ...

    def scan(
        self, start: bytes | None = None, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def stats(self) -> dict: ...

    def approx_key_count(self) -> int: ...


# Counting live keys exactly means scanning them; above this many the engine's estimate is used.
EXACT_COUNT_LIMIT = 100_000


def _is_live(version: StorageVersion | None, now_ms: int) -> bool:
    if version is None or version.tombstone:
        return False
    expires = version.expires_at_ms
    return expires is None or expires > now_ms


def ring_tokens(node_id: str, url: str, vnodes: int) -> list[tuple[int, str]]:
    """(token, url) for every virtual node of one node, sorted: a one-member ring."""
    return sorted((token, url) for token in vnode_tokens(node_id, vnodes))


class LocalService:
    """A NodeService for one node: every key is owned here, and there is no ring to change."""

    background = None  # no streaming, repair or hint replay to hold back
    backups: Backups | None = None  # set by the server (limedb.cluster.backup.agent)

    # Its coroutines await nothing but futures (no asyncio.timeout, no current_task), so the
    # HTTP layer may step them outside a task and answer a read in the same callback.
    inline_safe = True

    def __init__(
        self,
        engine: StorageEngine,
        *,
        node_id: str,
        node_url: str,
        vnodes: int = default("vnodes"),
        clock: HLC | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_url = node_url
        self._engine = engine
        # The engine's clock has observed every stored timestamp during recovery; stamping with
        # any other clock could order a new write before an old one (and lose it).
        self._clock = clock or engine.hlc
        self._vnodes = vnodes
        self._tokens = tuple(ring_tokens(node_id, node_url, vnodes))
        self._started_at = time.time()
        self._ready = False
        self._stopping = False
        self._atomic_locks = KeyLocks()

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        # Writes that arrive after this point would race engine.close(); refuse them cleanly.
        self._stopping = True
        self._ready = False
        if self.backups is not None:
            await self.backups.stop()

    def ready(self) -> bool:
        return self._ready

    def owner_url(self, key: bytes) -> str:
        return self.node_url

    def _check_open(self) -> None:
        if self._stopping:
            raise Unavailable("node is shutting down", retry_after=1.0)

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult:
        self._check_open()
        version = self._engine.get_version(storage_key(key))
        if version is not None and version.tombstone:
            # As the cluster's read does: a deleted key's stamp is its tombstone's, so WATCH
            # sees a create-and-delete meanwhile.
            return ReadResult(None, self.node_url, version.ts)
        if not _is_live(version, wall_millis()):
            return ReadResult(None, self.node_url)
        assert version is not None
        return ReadResult(version.value, self.node_url, version.ts, version.expires_at_ms)

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        consistency: Consistency | None = None,
    ) -> int:
        self._check_open()
        ts = self._clock.now()
        # Expiry counts from the version's own clock so replicas agree on the deadline.
        expires = millis_of(ts) + ttl_ms if ttl_ms else None
        try:
            await self._engine.put_async(storage_key(key), value, ts=ts, expires_at_ms=expires)
        except DiskFullError as exc:
            raise refused_write(exc) from exc
        except StorageError as exc:
            raise Unavailable(f"storage refused the write: {exc}") from exc
        return ts

    async def delete(self, key: bytes, consistency: Consistency | None = None) -> bool:
        self._check_open()
        skey = storage_key(key)
        existed = _is_live(self._engine.get_version(skey), wall_millis())
        try:
            await self._engine.delete_async(skey, ts=self._clock.now())
        except DiskFullError as exc:
            raise refused_write(exc) from exc
        except StorageError as exc:
            raise Unavailable(f"storage refused the delete: {exc}") from exc
        return existed

    async def atomic_update(
        self, key: bytes, fn: ReadModifyWrite, consistency: Consistency | None = None
    ) -> object:
        """Read-modify-write under a per-key lock: every key's primary is this node."""
        self._check_open()
        return await apply_locally(self._atomic_locks, key, fn, self.get, self._engine, self._clock)

    async def atomic_batch(
        self, steps: list[Step], watches: list[Watch], consistency: Consistency | None = None
    ) -> list[StepResult] | None:
        """A transaction: every key's primary is this node."""
        self._check_open()
        if not steps and not watches:
            return []
        return await run_batch(
            self._atomic_locks, steps, watches, self.get, self._apply_outcome, wall_millis
        )

    async def _apply_outcome(self, key: bytes, outcome: Outcome, current: ReadResult) -> int:
        ts = self._clock.now()
        try:
            if outcome.action is Action.SET:
                await self._engine.put_async(
                    storage_key(key), outcome.value, ts=ts, expires_at_ms=outcome.expires_at_ms
                )
            else:
                await self._engine.delete_async(storage_key(key), ts=ts)
        except DiskFullError as exc:
            raise refused_write(exc) from exc
        except StorageError as exc:
            raise Unavailable(f"storage refused the write: {exc}") from exc
        return ts

    async def cluster_keys(self, match: Callable[[bytes], bool]) -> list[bytes]:
        """This node holds every key."""
        self._check_open()
        keys: list[bytes] = []
        after: bytes | None = None
        while True:
            page = self.local_items(after, 10_000)
            keys.extend(k for k, _ in page if match(k))
            if len(page) < 10_000:
                return keys
            after = page[-1][0]

    async def replica_report(self, key: bytes) -> ReplicaReport:
        """The only replica is this node."""
        self._check_open()
        live = _is_live(self._engine.get_version(storage_key(key)), wall_millis())
        me = ReplicaHolding(self.node_url, is_primary=True, is_local=True, has_value=live)
        return ReplicaReport(replication_factor=1, quorum=1, replicas=(me,))

    def local_items(self, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        # The smallest storage key greater than `after`'s: the same token and key + NUL.
        start = storage_key(after) + b"\x00" if after is not None else None
        return [(user_key(k), v) for k, v in self._engine.scan(start, None, limit)]

    def local_count(self) -> int:
        """Live keys on this node: exact up to EXACT_COUNT_LIMIT, the engine's estimate above."""
        estimate = int(self._engine.approx_key_count())
        if estimate > EXACT_COUNT_LIMIT:
            return estimate
        return len(self._engine.scan(None, None, None))

    def stats(self) -> dict:
        stats = dict(self._engine.stats())
        return stats

    # ------------------------------------------------------------------ AdminService

    def ring_record(self) -> RingRecord | None:
        return None

    async def propose(self, change: Change) -> Proposal:
        raise NotClustered(ALONE)

    async def repair(self, token_range: tuple[int, int] | None = None) -> dict:
        raise NotClustered("this node runs alone (started without seeds): it has no replicas")

    async def verify(self, epoch: int | None = None) -> dict:
        raise NotClustered("this node runs alone (started without seeds): it has no replicas")

    def admin_status(self) -> dict:
        me = {"node_id": self.node_id, "url": self.node_url, "state": "Normal"}
        return {
            "epoch": 1,
            "node_id": self.node_id,
            "members": [{**me, "liveness": "alive"}],
            "replication_factor": 1,
            "vnodes": self._vnodes,
            "transition": None,
            "last_transition": None,
            **announced(),
        }

    def cluster_view(self) -> ClusterView:
        """Self as the only member: what /api/v1/cluster/* report for a standalone node."""
        heartbeat = int(time.time() - self._started_at)
        me = MemberView(self.node_id, self.node_url, "Normal", "active", heartbeat, 0)
        return ClusterView(
            node_id=self.node_id,
            node_url=self.node_url,
            members=(me,),
            ring_epoch=1,
            vnodes_per_node=self._vnodes,
            tokens=self._tokens,
            heartbeat=heartbeat,
        )
