"""Runs ring transitions: propose, stream every changed range, commit, clean up, finish.

Every node runs a `TransitionDriver`; the one that acts is the first live node, by id, of the
nodes in both rings (the `lost` and `fresh` nodes of a replace excluded), as this node's
failure detector sees it, so when the driving node dies the next one picks the transition up
from the ring record it persisted and gossiped. Each step is a new version of the record,
adopted (persisted) here first and then pushed to every live node:

- proposed: once every live node holds the record, writes go to old AND new owners
  everywhere; after a record exchange with every node (a rival proposal of the same epoch
  wins or loses there, see limedb.cluster.proposals) streaming starts;
- streaming: for each target, first the release of ranges it once handed off, then its ranges
  in token order, a few at a time, batch by batch from a live source
  to the target, throttled, with the position checkpointed into the record about once a
  second, so a restart of anyone resumes there (a re-sent batch is harmless: LWW);
- committed: reads move to the new owners once every target has every range;
- cleanup: writes go to the new owners only; after a grace for writes already in flight,
  old owners hand off the ranges they lost (recorded and hidden, then purged from their storage
  in the background, see streaming.RangeStreams.hand_off); then done, and the driver has the
  ranges it moved verified across their new replicas (limedb.cluster.verifier).

A target or every source of a range unreachable for longer than `timeout_s` rolls the
transition back (only possible before commit); the targets then hand off what they received.
Every ring member that adopts a finished record hands off whatever it does not replicate in the
committed ring, so a node down through several transitions drops what each of them took.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from limedb.cluster import rpc
from limedb.cluster.handed_off import difference, merged
from limedb.cluster.inflight import InFlight
from limedb.cluster.keys import MAX_TOKEN, split_wrapping
from limedb.cluster.membership import Membership
from limedb.cluster.proposals import Proposals
from limedb.cluster.ring.exchange import RecordExchange
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.status import transition_status
from limedb.cluster.streaming import (
    HANDOFF,
    RELEASE,
    RPC_TIMEOUT_S,
    RangeStreamer,
    RangeStreams,
    Throttle,
    encode_handoff,
    snapshot_floor,
)
from limedb.cluster.transitions import (
    Change,
    Kind,
    Phase,
    Transition,
    TransitionRefused,
    propose,
)
from limedb.config import Config, default
from limedb.hlc import wall_millis as now_ms
from limedb.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Superseded(Exception):
    """The record moved on without us (another driver, a rollback): stop this step."""


@dataclass(frozen=True)
class DriverSettings:
    batch_bytes: int = 512 * 1024
    bytes_per_s: float = default("stream_mb_per_s") * 1e6
    cleanup_grace_s: float = default("cleanup_grace_ms") / 1000
    cleanup_hold_s: float = default("cleanup_hold_ms") / 1000
    # How long a node may take to finish the requests it began before the cleanup record: a
    # request's own deadline, and a second.
    drain_s: float = default("request_timeout_ms") / 1000 + 1.0
    timeout_s: float = float(default("transition_timeout_s"))
    checkpoint_s: float = 1.0
    parallel_ranges: int = 4
    poll_s: float = 0.5
    stream_mode: str = default("stream_mode")

    @classmethod
    def from_config(cls, config: Config) -> DriverSettings:
        return cls(
            bytes_per_s=config.stream_mb_per_s * 1e6,
            cleanup_grace_s=config.cleanup_grace_ms / 1000,
            cleanup_hold_s=config.cleanup_hold_ms / 1000,
            drain_s=config.request_timeout_ms / 1000 + 1.0,
            timeout_s=config.transition_timeout_s,
            stream_mode=config.stream_mode,
        )


class TransitionDriver:
    """One node's part in transitions: proposing, and driving when elected (what status shows
    of them is shaped by limedb.cluster.status)."""

    def __init__(
        self,
        node_id: str,
        keeper: RingKeeper,
        membership: Membership,
        streams: RangeStreams,
        call: rpc.Call,
        settings: DriverSettings | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self.node_id = node_id
        self.keeper = keeper
        self.membership = membership
        self.streams = streams
        self.call = call
        self.settings = settings or DriverSettings()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._unreachable_since: dict[str, float] = {}
        # When this process first saw each transition in cleanup (monotonic): the grace counts
        # from there, not from the record's wall-clock stamp, which another node's clock made.
        self._cleanup_seen: dict[str, float] = {}
        self._background: set[asyncio.Future] = set()
        self.streamer = RangeStreamer(
            node_id,
            streams,
            call,
            self,
            batch_bytes=self.settings.batch_bytes,
            checkpoint_s=self.settings.checkpoint_s,
            parallel_ranges=self.settings.parallel_ranges,
            tables=self.settings.stream_mode == "tables" and streams.tables is not None,
        )
        self.records = RecordExchange(node_id, keeper, membership, call, inflight)
        # Told of every transition this node finished (the verifier checks its ranges).
        self.on_done: Callable[[Transition], None] | None = None
        self.proposals = Proposals(self)
        keeper.add_listener(self._on_record)
        if keeper.state is not None:
            self._hand_off_own(keeper.state)
            self._announce_own_status(keeper.state)

    def _on_record(self, state: RingRecord) -> None:
        self._wake.set()
        self._hand_off_own(state)
        self._announce_own_status(state)

    def _announce_own_status(self, state: RingRecord) -> None:
        """Gossip this node's cluster state (joining, leaving, left, normal) for the views."""
        t, me = state.transition, self.node_id
        status = "normal"
        if t is not None and t.active:
            if (me not in t.old_ring or me in t.change.fresh) and t.phase in (
                Phase.PROPOSED,
                Phase.STREAMING,
            ):
                status = "joining"
            elif me in t.old_ring and me not in t.new_ring:
                status = "leaving"
        elif t is not None and t.phase is Phase.DONE and me in t.old_ring and me not in t.new_ring:
            status = "left"
        gossip = self.membership.gossip
        if gossip.own.status != status:
            gossip.set_status(status)

    def _hand_off_own(self, state: RingRecord) -> None:
        """Hand off (record, hide and purge from storage) every range this node does not own
        once a transition has finished: the ranges the transition took from it (or, rolled
        back, gave it), and, for a ring member, everything outside the ranges it replicates in
        the committed ring. The latter covers a node that was down while the driver cleaned up,
        even through several transitions: it learns only the latest record, whose moves say
        nothing of the earlier ones. Only pieces not handed off yet are added, so adopting
        record after record rewrites and purges nothing twice.

        Never while a transition runs (this node may be receiving ranges it does not own yet).
        A finished record cannot take a range this node will own: a range only comes to a node
        as a target of a later transition, which releases it first (`_release`), and the node
        persisted that transition's record before, so it never goes back to an older one. A
        record that never had a transition moved nothing, so nothing is handed off then (a
        node that bootstrapped from a stale member list must not purge what it holds).
        """
        t = state.transition
        if t is None or t.phase not in (Phase.DONE, Phase.ROLLED_BACK):
            return
        me = self.node_id
        if t.phase is Phase.DONE:
            ranges = [(m.start, m.end) for m in t.moves if me in m.removed]
        else:
            ranges = [
                (m.start, m.end) for m in t.moves if me in m.targets and me not in m.old_replicas
            ]
        if me in state.ring:
            ranges.extend(unowned_ranges(state, me))
        new = self.streams.handed_off.missing(ranges)
        if new:
            log.info("handing off %d range(s) this node no longer owns", len(new))
            self.streams.hand_off(new)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="transition-driver")
        self.streams.resume_purges()  # purges pending from before a restart, or before the loop ran

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.RING_RECORD, self.records.handle)
        server.register(rpc.DRAIN, self.records.handle_drain)
        server.register(rpc.PROPOSE, self.proposals.handle)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.streams.stop_purges()

    # ------------------------------------------------------------------ queries

    def is_alive(self, node_id: str) -> bool:
        return node_id == self.node_id or self.membership.is_alive(node_id)

    def driver_of(self, t: Transition) -> str | None:
        """The node that should drive `t`, as this node sees liveness."""
        excluded = t.change.lost | t.change.fresh
        both = sorted((set(t.old_ring.members) & set(t.new_ring.members)) - excluded)
        return next((n for n in both if self.is_alive(n)), None)

    def liveness(self, node_id: str) -> str:
        """This node's verdict on `node_id` ("alive" for itself), as status reports it."""
        return "alive" if node_id == self.node_id else self.membership.liveness(node_id).value

    def transition_status(self, t: Transition) -> dict:
        """`t` as status and the proposer's answer show it (limedb.cluster.status)."""
        return transition_status(t, now_ms(), self.driver_of(t), self.streamer.meter.rate())

    # ------------------------------------------------------------------ proposing

    def propose(self, change: Change) -> Transition:
        """Validate and start `change`; raises TransitionRefused with the reason."""
        state = self.keeper.state
        if state is None:
            raise TransitionRefused("this node has not learned the ring yet; ask a ring member")
        live = {n for n in {*state.all_members(), change.node_id} if n and self.is_alive(n)}
        if change.kind is Kind.REPLACE and change.new_node_id == change.node_id:
            # A replacement that kept the dead node's id (a pod on a new volume) is what
            # answers for that id now; the old process is gone all the same.
            live.discard(change.node_id)
        if change.kind in (Kind.JOIN, Kind.REPLACE):
            newcomer = change.new_node_id or change.node_id
            if not self.is_alive(newcomer):
                raise TransitionRefused(
                    f"node {newcomer} ({change.url}) is not alive in gossip yet: start it with "
                    f"--seeds naming a ring member, and retry"
                )
        # Later than the previous transition even on a clock that went back: a transition
        # rolled back at the epoch this one proposes must not outrank it (RingRecord.rank).
        started = now_ms()
        if state.transition is not None:
            started = max(started, state.transition.started_ms + 1)
        t = propose(
            state.ring, state.rf, change, now_ms=started, running=state.transition, live=live
        )
        if not self.keeper.adopt(state.with_transition(t)):
            raise TransitionRefused(f"transition {t.id} does not outrank the ring record here")
        self._wake.set()
        log.info("proposed transition %s: %s", t.id, change.describe())
        return t

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._drive_once()
            except asyncio.CancelledError:
                raise
            except Superseded as exc:
                log.info("transition step superseded: %s", exc)
            except Exception:
                log.exception("transition driver step failed")
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)
            except TimeoutError:
                pass

    def current(self, t: Transition) -> Transition:
        """The newest copy of `t`; Superseded if the record now holds something else."""
        state = self.keeper.state
        now = state.transition if state is not None else None
        if now is None or now.id != t.id:
            raise Superseded(f"transition {t.id} is no longer the current one")
        if now.phase is not t.phase:
            raise Superseded(f"transition {t.id} moved to {now.phase.value}")
        return now

    def step(self, t: Transition) -> None:
        state = self.keeper.state
        assert state is not None
        self.keeper.adopt(state.with_transition(t))

    async def _drive_once(self) -> None:
        state = self.keeper.state
        t = state.active if state is not None else None
        if t is None or self.driver_of(t) != self.node_id:
            return
        if t.phase is Phase.PROPOSED:
            await self.records.push_everywhere()
            # A rival proposal of the same epoch made elsewhere at the same moment wins or
            # loses here, before anything streams (Superseded if it won).
            await self.records.exchange()
            self.step(self.current(t).begin_streaming(now_ms()))
        elif t.phase is Phase.STREAMING:
            await self._stream_all(t)
            t = self.current(t)
            if not t.pending_streams():
                self.step(t.commit(now_ms()))
                await self.records.push_everywhere()
        elif t.phase is Phase.COMMITTED:
            await self.records.push_everywhere()
            # No push of the cleanup record here: the cleanup step's DRAIN carries it.
            self.step(self.current(t).begin_cleanup(now_ms()))
        elif t.phase is Phase.CLEANUP:
            seen = self._cleanup_seen.setdefault(t.id, time.monotonic())
            # Every node routes by the cleanup record and has finished what it began before;
            # a node that does not confirm it (down, or of a version without DRAIN) gets the
            # grace instead. Both waits count from when this process first saw the step.
            unconfirmed = await self.records.drain_everywhere(self.settings.drain_s)
            wait_s = self.settings.cleanup_hold_s
            if unconfirmed:
                log.info(
                    "transition %s: %s did not confirm draining; waiting out the grace",
                    t.id,
                    ", ".join(unconfirmed),
                )
                wait_s = max(wait_s, self.settings.cleanup_grace_s)
            wait_s += seen - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await self._hand_off(self.current(t), lambda m: m.removed)
            done = self.current(t).finish(now_ms())
            self.step(done)
            self._cleanup_seen.pop(t.id, None)
            await self.records.push_everywhere()
            log.info("transition %s done", t.id)
            if self.on_done is not None:
                self.on_done(done)

    # ------------------------------------------------------------------ streaming

    async def _release(self, t: Transition, target: str, ranges: list[tuple[int, int]]) -> None:
        """The target forgets ranges it once handed off, so what streams in is its own again.
        Sent when streaming to it (re)starts, right after the target confirmed it holds (has
        persisted) this transition's record: a restart cannot then go back to an older record
        that would hide the ranges again, or hand them off as not its own."""
        while True:
            if not self.is_alive(target):
                self.stalled(t, f"target {target}", target)
                await asyncio.sleep(0.5)
                continue
            state = self.keeper.state
            remote = bool(ranges) and target != self.node_id and state is not None
            if remote and not await self.records.push(target):
                await asyncio.sleep(0.5)
                continue
            if await self._handoff_call(target, RELEASE, ranges, wait=False):
                return

    async def _handoff_call(
        self, node: str, op: int, ranges: list[tuple[int, int]], *, wait: bool
    ) -> bool:
        if not ranges:
            return True
        if node == self.node_id:
            await self.streams.handoff(op, ranges)
            return True
        payload = encode_handoff(op, ranges)
        deadline = time.monotonic() + (self.settings.timeout_s if wait else 5.0)
        while True:
            try:
                await self.call(node, rpc.HANDOFF, payload, RPC_TIMEOUT_S)
                return True
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                if time.monotonic() > deadline:
                    log.warning("could not reach %s to hand off ranges: %s", node, exc)
                    return False
            await asyncio.sleep(0.5)

    async def _hand_off(self, t: Transition, nodes_of) -> None:
        by_node: dict[str, list[tuple[int, int]]] = {}
        for move in t.moves:
            for node in nodes_of(move):
                by_node.setdefault(node, []).append((move.start, move.end))
        await asyncio.gather(
            *(
                self._handoff_call(node, HANDOFF, ranges, wait=self.is_alive(node))
                for node, ranges in by_node.items()
            )
        )

    async def _stream_all(self, t: Transition) -> None:
        throttle = Throttle(self.settings.bytes_per_s)
        # Every live node routes writes to old and new owners by now (the record was pushed
        # before streaming began), so a source snapshot taken from here on misses nothing.
        floor = snapshot_floor()
        results = await asyncio.gather(
            *(self._stream_to(t, target, throttle, floor) for target in t.pending_streams()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _stream_to(self, t: Transition, target: str, throttle: Throttle, floor: float):
        """Release what `target` once handed off of its ranges, then stream them from where
        its checkpoint says."""
        progress = self.current(t).progress_of(target)
        indexes = t.streams()[target]
        pending = [(t.moves[i].start, t.moves[i].end) for i in indexes[progress.index :]]
        await self._release(t, target, pending)
        await self.streamer.stream(t, target, progress, throttle, floor)

    def stalled(self, t: Transition, what: str, since_key: str) -> None:
        """Roll back when `what` has been unreachable for longer than the timeout."""
        since = self._unreachable_since.setdefault(since_key, time.monotonic())
        timeout = self.settings.timeout_s
        if timeout > 0 and time.monotonic() - since > timeout:
            reason = f"{what} unreachable for more than {timeout:.0f}s"
            log.warning("rolling back transition %s: %s", t.id, reason)
            rolled = self.current(t).roll_back(reason, now_ms())
            self.step(rolled)
            task = asyncio.ensure_future(self._after_rollback(rolled))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise Superseded(f"rolled back: {reason}")

    def reachable(self, *since_keys: str) -> None:
        """Peers named by `since_keys` answered again: their stall clocks start over."""
        for key in since_keys:
            self._unreachable_since.pop(key, None)

    async def _after_rollback(self, t: Transition) -> None:
        await self.records.push_everywhere()
        # Targets drop what they received, except ranges they owned before (a replacement
        # keeping the dead node's id is such an owner).
        await self._hand_off(t, lambda m: [n for n in m.targets if n not in m.old_replicas])


def unowned_ranges(state: RingRecord, node_id: str) -> list[tuple[int, int]]:
    """The token ranges (inclusive, non-wrapping, merged) `node_id` does not replicate in the
    committed ring at the committed RF."""
    owned = [
        piece
        for r in state.ring.replica_ranges(node_id, state.rf)
        for piece in split_wrapping(r.start, r.end)
    ]
    return difference([(0, MAX_TOKEN)], merged(owned))
