"""The cluster coordinator: any node serves any key by reading and writing its ring replicas.

Writes are stamped here with the node's HLC, sent to all RF replicas (the local one applied
in-process, the others over the internal RPC) and acknowledged at W successes; a replica that
is down or fails gets a durable hint. Reads ask R replicas (local first, then live peers, then
the rest as a fallback), return the newest version, and repair stale responders (and, when
they disagree, the replicas not asked) in the background, within a bound so that repair never
competes unboundedly with foreground work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from limedb.cluster import rpc
from limedb.cluster.clock_offset import ClockOffsets, ClockOffsetUnavailable, is_refusal
from limedb.cluster.failure import Liveness
from limedb.cluster.hints import HintStore
from limedb.cluster.inflight import InFlight
from limedb.cluster.replica import Mutation, Replica, Stored, decode_applied, decode_stored
from limedb.cluster.ring.placement import Ring
from limedb.cluster.service import Consistency, InsufficientStorage, ReadResult, Unavailable
from limedb.cluster.transitions import WriteSet
from limedb.hlc import HLC, ClockOffsetError, wall_millis
from limedb.storage.errors import DiskFullError, OutOfDescriptorsError

log = logging.getLogger(__name__)


class Membership(Protocol):
    """What the coordinator needs to know about the cluster right now."""

    @property
    def ring(self) -> Ring: ...

    def liveness(self, node_id: str) -> Liveness: ...

    def peer_liveness(self, node_id: str) -> Liveness:
        """`liveness` of a node other than this one."""
        ...

    def url_of(self, node_id: str) -> str | None: ...


def required_acks(consistency: Consistency, replicas: int) -> int:
    if consistency is Consistency.ONE:
        return 1
    if consistency is Consistency.ALL:
        return replicas
    return replicas // 2 + 1


def disk_full_reason(node: str, error: BaseException) -> str | None:
    """Why `node` refused a write for a full disk (locally or over the RPC), else None."""
    if isinstance(error, DiskFullError) and not isinstance(error, OutOfDescriptorsError):
        return f"replica {node}: {error}"
    if isinstance(error, rpc.RpcError) and error.code == rpc.INSUFFICIENT_STORAGE:
        return f"replica {node}: {error.message}"
    return None


_LIVENESS_RANK = {Liveness.ALIVE: 0, Liveness.SUSPECT: 1, Liveness.DEAD: 2}


class _Quorum:
    """Counts a transition write's replica answers; `future` resolves True once the old owners
    and the new ones each have their W acknowledgements (a node in both counts for both),
    False once either group cannot get them any more. (Outside a transition: _SingleQuorum.)
    """

    __slots__ = (
        "acked_new",
        "acked_old",
        "disk_full",
        "existed",
        "failed_new",
        "failed_old",
        "future",
        "need_new",
        "need_old",
        "new",
        "old",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        old: tuple[str, ...],
        new: tuple[str, ...],
        need_old: int,
        need_new: int,
    ) -> None:
        self.future = loop.create_future()
        self.old, self.new = old, new
        self.need_old, self.need_new = need_old, need_new
        self.acked_old = self.acked_new = self.failed_old = self.failed_new = 0
        self.existed = False
        self.disk_full: str | None = None  # the first replica that refused for a full disk

    def succeeded(self, node: str, existed: bool) -> None:
        if node in self.old:
            self.acked_old += 1
        if node in self.new:
            self.acked_new += 1
        if not self.future.done():
            self.existed = self.existed or existed
            if self.acked_old >= self.need_old and self.acked_new >= self.need_new:
                self.future.set_result(True)

    def refused(self, node: str) -> None:
        if node in self.old:
            self.failed_old += 1
        if node in self.new:
            self.failed_new += 1
        if not self.future.done() and (
            len(self.old) - self.failed_old < self.need_old
            or len(self.new) - self.failed_new < self.need_new
        ):
            self.future.set_result(False)

    def shortfall(self) -> str:
        """What the write lacked, for the client's error."""
        return (
            f"{self.acked_old} of the {len(self.old)} old and {self.acked_new} of the "
            f"{len(self.new)} new replicas acknowledged, {self.need_old} of the old and "
            f"{self.need_new} of the new needed"
        )


class _SingleQuorum:
    """`_Quorum` of the usual write, outside a transition: one group of replicas."""

    __slots__ = ("acked", "disk_full", "existed", "failed", "future", "need", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, need: int) -> None:
        self.future = loop.create_future()
        self.size = size
        self.need = need
        self.acked = 0
        self.failed = 0
        self.existed = False
        self.disk_full: str | None = None

    def succeeded(self, node: str, existed: bool) -> None:
        self.acked += 1
        if not self.future.done():
            self.existed = self.existed or existed
            if self.acked >= self.need:
                self.future.set_result(True)

    def refused(self, node: str) -> None:
        self.failed += 1
        if not self.future.done() and self.size - self.failed < self.need:
            self.future.set_result(False)

    def shortfall(self) -> str:
        return f"{self.acked} of {self.size} replicas acknowledged, {self.need} needed"


class Routing(Protocol):
    """Where a key's writes and reads go right now (limedb.cluster.ring.keeper.RingKeeper)."""

    def settled_replicas(self, key: bytes) -> tuple[str, ...] | None:
        """The key's replicas when no transition runs, else None."""
        ...

    def write_set(self, key: bytes) -> WriteSet: ...

    def read_replicas(self, key: bytes) -> tuple[str, ...]: ...


class Coordinator:
    """Replicated reads and writes of user keys over the ring `membership` provides."""

    def __init__(
        self,
        *,
        node_id: str,
        membership: Membership,
        replica: Replica,
        client: rpc.RpcClient,
        address_of: Callable[[str], tuple[str, int]],
        hints: HintStore,
        hlc: HLC,
        replication_factor: int = 3,
        read_consistency: Consistency = Consistency.QUORUM,
        write_consistency: Consistency = Consistency.QUORUM,
        timeout_s: float = 5.0,
        max_repairs_in_flight: int = 256,
        clock: ClockOffsets | None = None,
    ) -> None:
        self.node_id = node_id
        self.membership = membership
        self.replica = replica
        self.client = client
        self.address_of = address_of
        self.hints = hints
        self.hlc = hlc
        self.rf = replication_factor
        self.read_consistency = read_consistency
        self.write_consistency = write_consistency
        self.timeout_s = timeout_s
        self.max_repairs = max_repairs_in_flight
        # Whether this node may stamp writes, and the physical time TTLs count from.
        self.clock = clock
        self._background: set[asyncio.Future] = set()
        self.counters = {
            "writes_unavailable": 0,
            "reads_unavailable": 0,
            "replica_write_failures": 0,
            "replica_writes_disk_full": 0,
            "replica_read_failures": 0,
            "read_repairs": 0,
            "read_repairs_dropped": 0,
            "replica_timestamp_refusals": 0,
        }
        self._repairs_in_flight = 0
        # Set by the node: the ring record's routing, which follows a running transition.
        self.routing: Routing | None = None
        # Every read and write, from its routing to its answer: a transition's cleanup waits
        # for those that began under the routing before it (limedb.cluster.inflight).
        self.inflight = InFlight()

    # ------------------------------------------------------------------ placement

    def replicas(self, key: bytes) -> tuple[str, ...]:
        """The replicas reads ask (during a transition, the owners its phase names)."""
        if self.routing is not None:
            return self.routing.read_replicas(key)
        return self.membership.ring.replicas(key, self.rf)

    def reachable(self, node_id: str) -> bool:
        """Whether `node_id` is not dead here (this node always is reachable): writes go to it,
        and the primary of an atomic operation (limedb.cluster.atomic) is the first such one."""
        # Suspect peers still get writes (a slow peer is not a dead one); dead ones get hints.
        return node_id == self.node_id or self.membership.liveness(node_id) is not Liveness.DEAD

    def _read_rank(self, node_id: str) -> tuple[bool, int]:
        # Local first (no network), then peers the failure detector trusts, then the rest.
        if node_id == self.node_id:
            return (False, 0)
        return (True, _LIVENESS_RANK[self.membership.liveness(node_id)])

    # ------------------------------------------------------------------ time

    def physical_ms(self) -> int:
        """The physical time expiry counts from (never the HLC, which peers can push)."""
        return self.clock.physical_ms() if self.clock is not None else wall_millis()

    def stamp(self) -> int:
        """A timestamp for a new write; ClockOffsetUnavailable when this node's clock is too
        far off the majority's for its stamps to order writes fairly."""
        if self.clock is not None:
            self.clock.check_can_stamp()
        return self.hlc.now()

    def stamp_after(self, ts: int) -> int:
        """A timestamp for a write that must order after the version `ts` (read-modify-write)."""
        if self.clock is not None:
            self.clock.check_can_stamp()
        try:
            return self.hlc.after(ts)
        except ClockOffsetError as exc:
            raise ClockOffsetUnavailable(
                f"cannot order a write after the stored one: {exc}"
            ) from None

    # ------------------------------------------------------------------ writes

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        consistency: Consistency | None = None,
    ) -> int:
        # self.stamp(), inline: every write comes here.
        if self.clock is not None:
            self.clock.check_can_stamp()
        ts = self.hlc.now()
        # An absolute expiry, so that every replica agrees on it, in the majority's physical
        # time: a TTL lasts as long whichever node coordinated it.
        expires = self.physical_ms() + ttl_ms if ttl_ms else None
        await self.write(Mutation(key, value, ts, False, expires), consistency)
        return ts

    async def delete(self, key: bytes, consistency: Consistency | None = None) -> bool:
        return await self.write(Mutation(key, b"", self.stamp(), True), consistency)

    async def write(self, mutation: Mutation, consistency: Consistency | None = None) -> bool:
        """Send `mutation` to every replica; returns whether a live value existed before.

        During a transition the replicas are the old and the new owners, and W of each must
        acknowledge; outside one, old and new are the same nodes. Raises Unavailable when
        fewer than the required replicas are reachable (nothing is written then) or
        acknowledged in time (the write may still have reached some replicas), and
        InsufficientStorage when full disks cost the write its quorum.
        """
        generation = self.inflight.begin()
        try:
            key = mutation.key
            routing = self.routing
            # Outside a transition (the usual case) one lookup gives the replicas; during one the
            # write set names old and new owners.
            targets = (
                self.membership.ring.replicas(key, self.rf)
                if routing is None
                else routing.settled_replicas(key)
            )
            plan: WriteSet | None = None
            if targets is None:
                plan = routing.write_set(key)  # type: ignore[union-attr]
                if plan.old is plan.new or plan.old == plan.new:
                    targets, plan = plan.old, None
            level = consistency or self.write_consistency
            me = self.node_id
            peer_liveness = self.membership.peer_liveness
            quorum: _Quorum | _SingleQuorum
            if plan is None:
                # One group, counted without loops. Suspect peers still get writes (a slow peer
                # is not a dead one); dead ones get hints (`reachable`, inline).
                reachable = [
                    node == me or peer_liveness(node) is not Liveness.DEAD for node in targets
                ]
                size = len(targets)
                need = size // 2 + 1 if level is Consistency.QUORUM else required_acks(level, size)
                alive = sum(reachable)
                if alive < need:
                    self.counters["writes_unavailable"] += 1
                    raise Unavailable(
                        f"{alive} of {size} replicas reachable, {need} needed",
                        retry_after=1.0,
                    )
                quorum = _SingleQuorum(asyncio.get_running_loop(), size, need)
            else:
                old, new = plan.old, plan.new
                need_old, need_new = required_acks(level, len(old)), required_acks(level, len(new))
                targets = plan.all
                reachable = [
                    node == me or peer_liveness(node) is not Liveness.DEAD for node in targets
                ]
                for group, need in ((old, need_old), (new, need_new)):
                    alive = sum(
                        ok for node, ok in zip(targets, reachable, strict=True) if node in group
                    )
                    if alive < need:
                        self.counters["writes_unavailable"] += 1
                        raise Unavailable(
                            f"{alive} of {len(group)} replicas reachable, {need} needed",
                            retry_after=1.0,
                        )
                quorum = _Quorum(asyncio.get_running_loop(), old, new, need_old, need_new)
            payload = None
            # Each replica's answer feeds the quorum through a plain callback: the local one from
            # the batch's fsync, a peer's from the connection's reader (no future per replica).
            for node, ok in zip(targets, reachable, strict=True):
                if node == me:
                    self.replica.apply_then(
                        mutation, partial(self._local_answered, node, mutation, quorum)
                    )
                elif ok:
                    payload = payload or mutation.encode()
                    self.client.peer(*self.address_of(node)).request_then(
                        rpc.REPLICATE,
                        payload,
                        self.timeout_s,
                        partial(self._peer_answered, node, mutation, quorum),
                    )
                else:
                    quorum.refused(node)
                    self._track(self._hint(node, mutation))
            if not await quorum.future:
                self.counters["writes_unavailable"] += 1
                message = quorum.shortfall()
                if quorum.disk_full is not None:
                    raise InsufficientStorage(f"{message}: {quorum.disk_full}")
                raise Unavailable(message, retry_after=1.0)
            return quorum.existed
        finally:
            self.inflight.end(generation)

    def _local_answered(
        self,
        node: str,
        mutation: Mutation,
        quorum: _Quorum | _SingleQuorum,
        applied: bool,
        existed: bool,
        error: BaseException | None,
    ) -> None:
        if error is None:
            quorum.succeeded(node, existed)
        else:
            self._replica_failed(node, mutation, quorum, error)

    def _peer_answered(
        self,
        node: str,
        mutation: Mutation,
        quorum: _Quorum | _SingleQuorum,
        reply: bytes | None,
        error: BaseException | None,
    ) -> None:
        if error is None:
            # Only a delete reports whether a live value existed (replica.apply_soon).
            existed = mutation.tombstone and decode_applied(reply)[1]  # type: ignore[arg-type]
            quorum.succeeded(node, existed)
        else:
            self._replica_failed(node, mutation, quorum, error)

    def _replica_failed(
        self,
        node: str,
        mutation: Mutation,
        quorum: _Quorum | _SingleQuorum,
        error: BaseException,
    ) -> None:
        self.counters["replica_write_failures"] += 1
        full = disk_full_reason(node, error)
        if full is not None:
            self.counters["replica_writes_disk_full"] += 1
            if quorum.disk_full is None:
                quorum.disk_full = full
        quorum.refused(node)
        if is_refusal(error):
            # The replica's clock bound refused this node's timestamp: no hint, which would
            # land it later, once the replica's clock caught up with it.
            self.counters["replica_timestamp_refusals"] += 1
            log.warning("write to %s refused: %s", node, error)
            if self.clock is not None:
                self.clock.remeasure_soon()
            return
        if node == self.node_id and full is None:
            log.error("local write failed: %r", error)
        else:
            log.debug("write to %s failed: %r", node, error)
        # The replica missed it (or may have): a durable hint delivers it when it is back.
        self._track(self._hint(node, mutation))

    async def _hint(self, node: str, mutation: Mutation) -> None:
        try:
            await self.hints.add(node, mutation)
        except Exception:
            log.exception("could not store a hint for %s", node)

    async def deliver_hint(self, node: str, mutation: Mutation) -> None:
        """Send one hinted mutation to its replica (used by the hint store's replay)."""
        if node == self.node_id:
            await self.replica.apply(mutation)
            return
        await self.call(node, rpc.REPLICATE, mutation.encode(), self.timeout_s)

    def call(self, node: str, kind: int, payload: bytes, timeout_s: float) -> asyncio.Future:
        """Send one request to a peer; the future holds its reply (await it)."""
        host, port = self.address_of(node)
        return self.client.peer(host, port).request(kind, payload, timeout_s)

    # ------------------------------------------------------------------ reads

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult:
        generation = self.inflight.begin()
        try:
            routing = self.routing
            replicas = (
                self.membership.ring.replicas(key, self.rf)
                if routing is None
                else routing.settled_replicas(key) or routing.read_replicas(key)
            )
            level = consistency or self.read_consistency
            size = len(replicas)
            need = size // 2 + 1 if level is Consistency.QUORUM else required_acks(level, size)
            answers: dict[str, Stored | None] = {}
            me = self.node_id
            if me in replicas and self.replica.serves_reads:
                answers[me] = self.replica.read(key)
            # Then peers the failure detector trusts, then the rest (a stable sort keeps ring
            # order among equals); a node that waits to be replaced has no data to read.
            untried = [n for n in replicas if n != me]
            if (
                len(untried) > 1
                and need - len(answers) > 0
                and (
                    # Two peers, the first of them alive: the sort would leave them as they are.
                    len(untried) > 2
                    or self.membership.peer_liveness(untried[0]) is not Liveness.ALIVE
                )
            ):
                untried.sort(key=self._read_rank)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while len(answers) < need:
                missing = need - len(answers)
                wave, untried = untried[:missing], untried[missing:]
                remaining = deadline - loop.time()
                if not wave or remaining <= 0:
                    self.counters["reads_unavailable"] += 1
                    raise Unavailable(
                        f"{len(answers)} of {len(replicas)} replicas answered, {need} needed",
                        retry_after=1.0,
                    )
                # Each attempt gets at most a second, so a paused replica delays a read by that
                # much before the next replica is asked, not by the whole request budget.
                attempt_s = min(remaining, 1.0)
                if len(wave) == 1:
                    node = wave[0]
                    peer = self.client.peer(*self.address_of(node))
                    try:
                        answers[node] = decode_stored(await peer.request(rpc.READ, key, attempt_s))
                    except (rpc.PeerUnavailable, rpc.RpcError):
                        self.counters["replica_read_failures"] += 1
                    continue
                results = await asyncio.gather(
                    *(self.call(node, rpc.READ, key, attempt_s) for node in wave),
                    return_exceptions=True,
                )
                for node, result in zip(wave, results, strict=True):
                    if isinstance(result, bytes):
                        answers[node] = decode_stored(result)
                    else:
                        self.counters["replica_read_failures"] += 1
            newest: Stored | None = None
            if len(answers) == 2:
                # The usual answer, two replicas that agree: nothing to compare or repair.
                a, b = answers.values()
                if a is None or b is None:
                    newest = a or b
                    agreed = a is b
                else:
                    agreed = (
                        a.ts == b.ts
                        and a.value == b.value
                        and a.tombstone == b.tombstone
                        and a.expires_at_ms == b.expires_at_ms
                    )
                    newest = a if agreed or a.newer_than(b) else b
            else:
                for stored in answers.values():
                    if stored is not None and stored.newer_than(newest):
                        newest = stored
                agreed = len(answers) < 2
            if newest is not None and not agreed:
                stale = [
                    n
                    for n, s in answers.items()
                    if s is not newest and (s is None or newest.newer_than(s))
                ]
                if stale:
                    # Replicas that disagree point to a missed write, which the replicas this read
                    # did not ask most likely missed as well: they get the newest version too (a
                    # replica that has it ignores it, last-writer-wins).
                    stale += [n for n in replicas if n not in answers]
                    self._repair(key, newest, stale)
            # LimeDB reports the key's owner, whichever node answered (during a transition, the
            # owner of the ring reads follow, which may not be in the current ring record yet).
            owner_url = self.membership.url_of(replicas[0]) or replicas[0]
            if newest is None:
                return ReadResult(None, owner_url)
            if newest.tombstone:
                # A deleted key reports its tombstone's stamp: a WATCH of an absent key then sees
                # a create-and-delete meanwhile, and a read-modify-write orders after the delete.
                return ReadResult(None, owner_url, newest.ts)
            if newest.expires_at_ms is not None and not newest.live(self.physical_ms()):
                # Expired: stamp 0, so a key that expires between WATCH and EXEC aborts (Redis).
                return ReadResult(None, owner_url)
            return ReadResult(newest.value, owner_url, newest.ts, newest.expires_at_ms)
        finally:
            self.inflight.end(generation)

    async def replica_values(self, key: bytes) -> list[tuple[str, bool | None]]:
        """Each replica of `key` in ring order and whether it holds a live value (None: it
        did not answer). Asks every replica directly, without repairing anything."""
        replicas = self.replicas(key)
        now = self.physical_ms()

        async def ask(node: str) -> bool | None:
            if node == self.node_id:
                if not self.replica.serves_reads:
                    return None
                stored = self.replica.read(key)
            else:
                try:
                    stored = decode_stored(await self.call(node, rpc.READ, key, self.timeout_s))
                except (rpc.PeerUnavailable, rpc.RpcError):
                    return None
            return stored is not None and stored.live(now)

        answers = await asyncio.gather(*(ask(node) for node in replicas))
        return list(zip(replicas, answers, strict=True))

    def _repair(self, key: bytes, newest: Stored, stale: list[str]) -> None:
        mutation = newest.as_mutation(key)
        for node in stale:
            if self._repairs_in_flight >= self.max_repairs:
                self.counters["read_repairs_dropped"] += 1
                continue
            self._repairs_in_flight += 1
            self.counters["read_repairs"] += 1
            self._track(self._repair_one(node, mutation))

    async def _repair_one(self, node: str, mutation: Mutation) -> None:
        try:
            await self.deliver_hint(node, mutation)
        except Exception as exc:
            log.debug("read repair of %s failed: %s", node, exc)
        finally:
            self._repairs_in_flight -= 1

    # ------------------------------------------------------------------ lifecycle

    def _track(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for in-flight replica writes, hints and repairs (used at shutdown)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)
