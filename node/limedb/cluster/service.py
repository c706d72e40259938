"""The contracts between the HTTP/RESP front ends and the node behind them.

`limedb.api` and the RESP listener call only these: `KeyValueService` for keys (the user's key
bytes, not the token-prefixed storage key) and `AdminService` for the node and its cluster
(ring, changes, status, repair: what Cassandra's StorageServiceMBean is to its tools). A single
node (`LocalService`) and a cluster node (`ClusterService`) implement both (`NodeService`), so
the front ends never learn how many replicas there are.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from limedb.storage.errors import DiskFullError, OutOfDescriptorsError

if TYPE_CHECKING:
    from limedb.cluster.atomic import ReadModifyWrite
    from limedb.cluster.background import BackgroundBudget
    from limedb.cluster.backup.agent import Backups
    from limedb.cluster.proposals import Proposal
    from limedb.cluster.ring.record import RingRecord
    from limedb.cluster.transaction import Step, StepResult, Watch
    from limedb.cluster.transitions import Change
    from limedb.cluster.view import ClusterView


class Consistency(enum.StrEnum):
    """How many replicas must answer: one, a majority of RF, or all RF."""

    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A read's outcome. `value` is None when the key is absent, deleted or expired; `ts`
    is the version's stamp, a deleted key's tombstone's included (0: no version stored, or
    the newest one expired)."""

    value: bytes | None
    owner_url: str
    ts: int = 0
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaHolding:
    """One replica of a key and whether it holds a live value (False if it did not answer)."""

    node_url: str
    is_primary: bool
    is_local: bool
    has_value: bool
    answered: bool = True


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """Where a key lives: GET /api/v1/replicas/{key}."""

    replication_factor: int
    quorum: int
    replicas: tuple[ReplicaHolding, ...]


class ServiceError(Exception):
    """Base of the errors a front end maps onto a status code."""


class Unavailable(ServiceError):
    """Not enough replicas answered (or the node is overloaded): HTTP 503 with Retry-After."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DescriptorsExhausted(Unavailable):
    """This node's storage could not open a file the write needed: the process (or the system)
    is out of file descriptors. HTTP 503 with Retry-After (RESP UNAVAILABLE), counted with the
    other requests refused for want of a descriptor; nothing of the write was acknowledged."""


class InsufficientStorage(ServiceError):
    """A replica's disk is full and the write could not reach its quorum without it: HTTP 507
    with Retry-After. Nothing of it was acknowledged; it succeeds again once space is freed."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def refused_write(exc: DiskFullError) -> ServiceError:
    """The service error for a write this node's storage engine refused: 507 for a full disk,
    503 when it is out of file descriptors (the disk has room)."""
    if isinstance(exc, OutOfDescriptorsError):
        return DescriptorsExhausted(str(exc), exc.retry_after_s)
    return InsufficientStorage(str(exc), exc.retry_after_s)


class InvalidRequest(ServiceError):
    """The request is malformed in a way only the service can tell: HTTP 400."""


class NotClustered(ServiceError):
    """A ring operation asked of a node that runs alone (started without seeds): HTTP 409."""


class KeyValueService(Protocol):
    node_id: str
    node_url: str
    # Whether its coroutines await only futures (no asyncio.timeout, no current_task), so the
    # HTTP layer may step them outside a task and answer in the parser's callback.
    inline_safe: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...

    def owner_url(self, key: bytes) -> str: ...

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult: ...

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        consistency: Consistency | None = None,
    ) -> int:
        """Store value; returns the version timestamp. Raises Unavailable below W acks."""
        ...

    async def delete(self, key: bytes, consistency: Consistency | None = None) -> bool:
        """Write a tombstone; returns whether a live value existed before."""
        ...

    async def atomic_update(
        self, key: bytes, fn: ReadModifyWrite, consistency: Consistency | None = None
    ) -> object:
        """Read-modify-write `key` atomically: `fn(current, now_ms)` runs at the key's primary
        replica under a per-key lock and decides the write and the reply (limedb.cluster.atomic;
        the guarantee is stated in docs/redis.md)."""
        ...

    async def atomic_batch(
        self, steps: list[Step], watches: list[Watch], consistency: Consistency | None = None
    ) -> list[StepResult] | None:
        """A transaction (limedb.cluster.transaction): every step `(key, ReadModifyWrite)` in
        order, atomically at the one primary of all its keys, or None if a watched key's
        version (`(key, ts seen)`) moved. Keys with different primaries raise ManyPrimaries;
        a step whose operation refuses answers its OperationRefused in place."""
        ...

    async def cluster_keys(self, match: Callable[[bytes], bool]) -> list[bytes]:
        """Every live key of the whole cluster that `match`es (RESP KEYS): asks every member,
        so it costs a scan of every node."""
        ...

    async def replica_report(self, key: bytes) -> ReplicaReport:
        """The key's replicas in ring order (the first is its primary), each asked directly
        whether it holds a live value."""
        ...

    def local_items(self, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """This node's own live keys in a stable order, starting after `after`."""
        ...

    def local_count(self) -> int: ...

    def stats(self) -> dict: ...


class AdminService(Protocol):
    """The node and its cluster as `/admin/*`, `limedb admin` and RESP INFO see them."""

    # Background work (streaming, repair, hint replay) that yields while clients queue; the
    # HTTP layer sets its `pressure`. None where there is no such work.
    background: BackgroundBudget | None
    # Backups and restores (limedb.cluster.backup): this node's part and the ones it runs.
    backups: Backups | None

    def ring_record(self) -> RingRecord | None:
        """The newest ring record known here; None on a lone node or before it learned one."""
        ...

    async def propose(self, change: Change) -> Proposal:
        """Hand `change` to the proposer (limedb.cluster.proposals) and return its verdict.
        Raises NotClustered on a lone node, ProposerUnavailable when no member is alive."""
        ...

    def admin_status(self) -> dict:
        """The object of `GET /admin/status`: epoch, members, RF, transitions (and repair and
        verification on a clustered node)."""
        ...

    async def repair(self, token_range: tuple[int, int] | None = None) -> dict:
        """Anti-entropy repair of this node's ranges now. Raises NotClustered on a lone node,
        limedb.cluster.repair.RepairRefused when one already runs."""
        ...

    async def verify(self, epoch: int | None = None) -> dict:
        """Compare the replicas of the ranges transition `epoch` moved (every range of the
        ring: None), repair differences, return the record (limedb.cluster.verifier). Raises
        NotClustered on a lone node, limedb.cluster.verifier.VerificationRefused when it
        cannot run now."""
        ...

    def cluster_view(self) -> ClusterView:
        """Members, liveness and ring tokens for /api/v1/cluster/* and RESP INFO."""
        ...


class NodeService(KeyValueService, AdminService, Protocol):
    """What a node serves to its front ends: keys and administration."""
