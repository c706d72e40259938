"""A node's live view of the cluster: the ring record, who is alive, and how to reach them.

`Membership` joins the gossip state machine to the failure detector: every newer heartbeat a
gossip exchange brings in is a heartbeat arrival, and every gossip round re-judges each peer
and tells listeners when one becomes alive, suspect or dead (hinted handoff replays on
"alive"). `GossipLoop` runs the rounds: once per `gossip_interval_s` it bumps this node's
heartbeat and exchanges SYN / ACK / ACK2 with a random live peer, sometimes an unreachable
one (to notice it is back) and a seed (to heal a split and to learn the cluster at start),
through an injected async `send(peer_url, message) -> reply`, so nothing here knows the
transport.

Liveness changes routing, never ownership: only a new ring epoch changes who owns what.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from limedb.cluster.failure import DetectorConfig, FailureDetector, Liveness
from limedb.cluster.gossip import (
    ACK2,
    SYN,
    GossipError,
    GossipState,
    HeartbeatState,
    start_generation,
)
from limedb.cluster.ring.placement import Ring
from limedb.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Send = Callable[[str, dict], Awaitable[dict]]


@dataclass(frozen=True, slots=True)
class LivenessChange:
    """A peer's liveness as this node judges it moved from `old` (None: first verdict)."""

    node_id: str
    url: str
    old: Liveness | None
    new: Liveness


Listener = Callable[[LivenessChange], object]


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as this node sees it right now."""

    node_id: str
    url: str
    liveness: Liveness
    phi: float
    silence_s: float
    generation: int
    version: int
    status: str
    in_ring: bool


@dataclass(frozen=True, slots=True)
class MembershipSnapshot:
    """An immutable picture for the views and `limedb status`; peers exclude this node."""

    node_id: str
    node_url: str
    ring: Ring | None
    generation: int
    heartbeat: int
    status: str
    peers: tuple[PeerView, ...]
    gossip_interval_s: float
    seeds: tuple[str, ...]

    def peer(self, node_id: str) -> PeerView | None:
        return next((p for p in self.peers if p.node_id == node_id), None)


class Membership:
    """Ring record + liveness + addresses of one node. Owned by one event loop."""

    def __init__(
        self,
        node_id: str,
        advertise_url: str,
        ring: Ring | None = None,
        *,
        seeds: Iterable[str] = (),
        generation: int | None = None,
        internal_addr: str = "",
        gossip_interval_s: float = 1.0,
        detector_config: DetectorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        first_generations: Mapping[str, int] | None = None,
        on_first_heard: Callable[[str, int], object] | None = None,
    ) -> None:
        self.node_id = node_id
        self.gossip_interval_s = gossip_interval_s
        self.seeds = tuple(dict.fromkeys(s.rstrip("/") for s in seeds if s))
        if ring is None and not self.seeds:
            # Nobody to learn a ring from: this node is a cluster of one.
            ring = Ring({node_id: advertise_url})
        self.detector = FailureDetector(detector_config, clock)
        # The liveness of another node, straight from the detector (the coordinator asks it
        # for a peer replica of nearly every operation).
        self.peer_liveness = self.detector.liveness
        self.gossip = GossipState(
            node_id,
            advertise_url,
            start_generation() if generation is None else generation,
            ring,
            internal_addr=internal_addr,
            on_update=self._on_heartbeat,
            on_ring=self._on_ring,
        )
        self._listeners: list[Listener] = []
        self._ring_listeners: list[Callable[[Ring], object]] = []
        self._reported: dict[str, Liveness] = {}
        self._heard: set[str] = set()
        # The generation each node was first heard at, in this process's life or an earlier
        # one (`first_generations`, limedb.cluster.heard; `on_first_heard` records a new one):
        # a node back on an empty disk asks whether it was heard before (limedb.cluster.rejoin).
        self._first_generation: dict[str, int] = dict(first_generations or {})
        self._on_first_heard = on_first_heard
        self._tasks: set[asyncio.Task] = set()
        if ring is not None:
            self._watch_members(ring)

    # ----------------------------------------------------------------- queries

    @property
    def ring(self) -> Ring | None:
        """The newest ring record known; None until a node started with seeds has learned it."""
        return self.gossip.ring

    @property
    def node_url(self) -> str:
        return self.gossip.own.advertise_url

    def liveness(self, node_id: str) -> Liveness:
        if node_id == self.node_id:
            return Liveness.ALIVE
        return self.detector.liveness(node_id)

    def is_alive(self, node_id: str) -> bool:
        return self.liveness(node_id) is Liveness.ALIVE

    def url_of(self, node_id: str) -> str | None:
        """How to reach a node: its own latest announcement, else the ring record."""
        state = self.gossip.states.get(node_id)
        if state is not None:
            return state.advertise_url
        ring = self.ring
        return ring.members.get(node_id) if ring is not None else None

    def internal_addr_of(self, node_id: str) -> str:
        state = self.gossip.states.get(node_id)
        return state.internal_addr if state is not None else ""

    def peer_ids(self) -> list[str]:
        """Every other node known from the ring or from gossip."""
        ids = dict.fromkeys(self.ring.members if self.ring is not None else ())
        ids.update(dict.fromkeys(self.gossip.states))
        ids.pop(self.node_id, None)
        return list(ids)

    def snapshot(self) -> MembershipSnapshot:
        ring = self.ring
        peers = []
        for node_id in self.peer_ids():
            health = self.detector.health(node_id)
            state = self.gossip.states.get(node_id)
            peers.append(
                PeerView(
                    node_id=node_id,
                    url=self.url_of(node_id) or node_id,
                    liveness=health.liveness if health else Liveness.DEAD,
                    phi=health.phi if health else float("inf"),
                    silence_s=health.silence_s if health else float("inf"),
                    generation=state.generation if state else 0,
                    version=state.version if state else 0,
                    status=state.status if state else "normal",
                    in_ring=ring is not None and node_id in ring,
                )
            )
        own = self.gossip.own
        return MembershipSnapshot(
            node_id=self.node_id,
            node_url=own.advertise_url,
            ring=ring,
            generation=own.generation,
            heartbeat=own.version,
            status=own.status,
            peers=tuple(peers),
            gossip_interval_s=self.gossip_interval_s,
            seeds=self.seeds,
        )

    # ----------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> None:
        """Called with a LivenessChange whenever a peer's verdict changes. A listener that
        returns an awaitable gets it scheduled as a task; it must not block."""
        self._listeners.append(listener)

    def add_ring_listener(self, listener: Callable[[Ring], object]) -> None:
        """Called with every newer ring this node adopts."""
        self._ring_listeners.append(listener)

    def _fire(self, listeners: Iterable[Callable], arg: object) -> None:
        for listener in listeners:
            try:
                result = listener(arg)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("membership listener failed")

    # ----------------------------------------------------------------- judging peers

    def check(self) -> list[LivenessChange]:
        """Re-judge every peer and tell listeners about changed verdicts."""
        changes = []
        for node_id in self.peer_ids():
            now = self.liveness(node_id)
            old = self._reported.get(node_id)
            # A peer we only know from the ring looks alive until the detector gives up on
            # it; that optimism is not news. Its first real heartbeat, or its death, is.
            if old is None and now is Liveness.ALIVE and node_id not in self._heard:
                continue
            if now is not old:
                self._reported[node_id] = now
                url = self.url_of(node_id) or node_id
                changes.append(LivenessChange(node_id, url, old, now))
        for change in changes:
            log.info("peer %s is now %s (was %s)", change.node_id, change.new, change.old)
            self._fire(self._listeners, change)
        return changes

    def first_generation(self, node_id: str) -> int | None:
        """The generation `node_id` was first heard at (directly or through a third node)."""
        return self._first_generation.get(node_id)

    def _on_heartbeat(self, node_id: str, old: HeartbeatState | None, new: HeartbeatState) -> None:
        if node_id not in self._first_generation:
            first = new.generation if old is None else old.generation
            self._first_generation[node_id] = first
            if self._on_first_heard is not None:
                self._on_first_heard(node_id, first)
        if old is None:
            # First sight of a node, perhaps through a third node's stale copy: no proof that
            # it lives. Watch it; its next newer heartbeat is the proof.
            self.detector.watch(node_id)
            return
        if old.generation != new.generation:
            self.detector.restart(node_id)
        else:
            self.detector.heartbeat(node_id)
        self._heard.add(node_id)

    def _watch_members(self, ring: Ring) -> None:
        for node_id in ring.members:
            if node_id != self.node_id:
                self.detector.watch(node_id)

    def _on_ring(self, ring: Ring) -> None:
        self._watch_members(ring)
        log.info("adopted ring epoch %d with %d members", ring.epoch, len(ring))
        self._fire(self._ring_listeners, ring)

    def adopt_ring(self, ring: Ring) -> bool:
        """Install a ring made here (cluster up, a transition); it gossips from now on."""
        return self.gossip.adopt_ring(ring)

    # ----------------------------------------------------------------- gossip messages

    def handle(self, message: dict) -> dict:
        """Answer a gossip message from a peer (the transport's incoming route).

        Raises GossipError for a malformed message: the transport answers 400.
        """
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == SYN:
            reply = self.gossip.on_syn(message)
        elif kind == ACK2:
            self.gossip.on_ack2(message)
            reply = {"type": "ok", "from": self.node_id}
        else:
            raise GossipError(f"unexpected gossip message type {kind!r}")
        self.check()
        return reply

    def gossip_targets(self, rng: random.Random) -> list[str]:
        """URLs to gossip with this round: a random live peer; with probability
        unreachable/(live+1) an unreachable one; a seed when no live peer was picked, when
        the ring is still unknown, or with probability 1/(live+1) (to join split groups)."""
        live, down = [], []
        for node_id in self.peer_ids():
            url = self.url_of(node_id)
            if not url or url == self.node_url:
                continue
            (live if self.is_alive(node_id) else down).append(url)
        targets = []
        if live:
            targets.append(rng.choice(live))
        if down and rng.random() < len(down) / (len(live) + 1):
            targets.append(rng.choice(down))
        seeds = [s for s in self.seeds if s != self.node_url]
        if seeds and (not live or self.ring is None or rng.random() < 1 / (len(live) + 1)):
            targets.append(rng.choice(seeds))
        return list(dict.fromkeys(targets))


class GossipLoop:
    """Runs a gossip round every `interval_s` until stopped."""

    def __init__(
        self,
        membership: Membership,
        send: Send,
        *,
        interval_s: float | None = None,
        timeout_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.membership = membership
        self.send = send
        self.interval_s = membership.gossip_interval_s if interval_s is None else interval_s
        # An exchange with a paused peer must not hold up the next round.
        self.timeout_s = 0.8 * self.interval_s if timeout_s is None else timeout_s
        self.rng = rng or random.Random()
        self.rounds = 0
        self.failed_exchanges = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gossip")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gossip round failed")
            next_round += self.interval_s
            now = loop.time()
            if next_round < now:
                # We fell behind (a paused process): start afresh instead of bursting.
                next_round = now
            await asyncio.sleep(next_round - now)

    async def run_round(self) -> None:
        membership = self.membership
        membership.gossip.beat()
        targets = membership.gossip_targets(self.rng)
        if targets:
            await asyncio.gather(*(self._exchange(url) for url in targets))
        self.rounds += 1
        membership.check()

    async def _exchange(self, url: str) -> bool:
        gossip = self.membership.gossip
        try:
            async with asyncio.timeout(self.timeout_s):
                ack = await self.send(url, gossip.make_syn())
                ack2 = gossip.on_ack(ack)
                await self.send(url, ack2)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed_exchanges += 1
            log.debug("gossip with %s failed: %r", url, exc)
            return False
