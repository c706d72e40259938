"""This node's clock against its peers': offsets measured NTP-style over the RPC PING, the
node's own offset from the majority, and the three decisions that follow from it.

1. Stamping: a node whose clock is more than half the maximum offset away from the majority
   of its peers refuses to coordinate writes (ClockOffsetUnavailable names its offset), so any
   two nodes that stamp writes are within the maximum offset of each other. Reads still work.
2. Admission: a timestamp arriving from elsewhere (replication, read repair, hints, streaming,
   repair) more than the maximum offset ahead of this node's physical time is refused, counted
   and logged with the peer; nothing beyond the bound reaches storage or the clock.
3. Expiry: TTLs count from physical time corrected by the measured offset (the majority's
   time), never from the hybrid clock, which a peer's timestamps can push forward.

A PING reply carries the replier's wall clock (u64 ns). The sender takes the midpoint of its
own wall clock over the round trip (measured on its monotonic clock, so a local step during the
ping does not matter); the error is at most half the round trip, so of the recent samples per
peer the one with the smallest round trip counts.

A step of this node's own wall clock counts at once, not after the next probes: each sample
keeps this node's wall-minus-monotonic clock at the time it was taken and is corrected by how
far that moved since, and stamping re-measures when it moved. (Found by the nemesis, seed 1:
a node stepped 30 s ahead coordinated writes on its stale samples for seconds, and the
version it applied locally won over later acknowledged writes once time caught up with it.)
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limedb.cluster import rpc
from limedb.cluster.service import Unavailable
from limedb.hlc import LOGICAL_BITS, MAX_TIMESTAMP, ahead_ms, millis_of
from limedb.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PING_REPLY = struct.Struct("!Q")  # the replier's wall clock, ns since the epoch
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
SAMPLES_PER_PEER = 8
SAMPLE_MAX_AGE_S = 30.0
# A wall clock that moved this far against the monotonic one since the last update stepped.
STEP_NS = 50_000_000
# Refusals are logged at most this often per peer: a skewed peer may send many.
LOG_EVERY_S = 10.0


# The clocks themselves, not wrappers: every write's clock checks read them (no Python call).
wall_ns = time.time_ns
mono_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class Sample:
    """One round trip to a peer: its clock minus ours (ms) and the round trip (ms)."""

    offset_ms: float
    rtt_ms: float
    taken_at: float  # this node's monotonic seconds
    base_ns: int = 0  # this node's wall minus monotonic clock when it was taken

    def offset_now(self, base_ns: int) -> float:
        """The offset corrected for this node's own clock steps since: `base_ns` is its wall
        minus monotonic clock now."""
        return self.offset_ms + (self.base_ns - base_ns) / 1e6


def sample(
    sent_wall_ns: int, sent_mono: float, received_mono: float, peer_ns: int, base_ns: int = 0
) -> Sample:
    """NTP's estimate: the peer read its clock halfway through the round trip."""
    rtt_s = max(received_mono - sent_mono, 0.0)
    midpoint_ns = sent_wall_ns + rtt_s * 1e9 / 2
    return Sample((peer_ns - midpoint_ns) / 1e6, rtt_s * 1000, received_mono, base_ns)


def best_offset(samples: list[Sample], base_ns: int | None = None) -> float | None:
    """A peer's offset from its samples: the one with the smallest round trip (corrected for
    this node's clock steps when given its wall minus monotonic clock now)."""
    if not samples:
        return None
    best = min(samples, key=lambda s: s.rtt_ms)
    return best.offset_ms if base_ns is None else best.offset_now(base_ns)


def own_offset(peer_offsets: list[float]) -> float:
    """This node's clock minus the majority's: minus the median of every node's clock
    (this one's, 0, included) relative to this one. 0 without measurements."""
    if not peer_offsets:
        return 0.0
    return -statistics.median([0.0, *peer_offsets])


def beyond_majority(peer_offsets: list[float], peers: int, limit_ms: float) -> bool:
    """Whether more than half of the `peers` other members (unmeasured ones count as close)
    are more than `limit_ms` away from this node's clock."""
    far = sum(1 for offset in peer_offsets if abs(offset) > limit_ms)
    return peers > 0 and far * 2 > peers


class ClockOffsetUnavailable(Unavailable):
    """This node's clock is too far from the majority's for it to stamp writes."""


class TimestampRefused(rpc.RpcError):
    """A timestamp from elsewhere lies beyond this node's maximum clock offset."""

    def __init__(self, message: str) -> None:
        super().__init__(rpc.TIMESTAMP_REFUSED, message)


def is_refusal(exc: BaseException) -> bool:
    """Whether a replica refused a timestamp (locally or over RPC): retrying cannot help."""
    return isinstance(exc, rpc.RpcError) and exc.code == rpc.TIMESTAMP_REFUSED


class ClockOffsets:
    """Measures every peer's clock and decides what this node's own offset allows.

    `members()` names the other members to measure; `ping(node_id, timeout_s)` sends one a
    PING and returns the reply body; `peer_name(address)` names the node at an RPC peer
    address for the log; `stamped()` is the node's newest HLC timestamp.
    """

    def __init__(
        self,
        max_offset_ms: int,
        members: Callable[[], list[str]],
        ping: Callable[[str, float], Awaitable[bytes]],
        *,
        peer_name: Callable[[str], str] = str,
        stamped: Callable[[], int] = lambda: 0,
        wall: Callable[[], int] = wall_ns,
    ) -> None:
        self.max_offset_ms = max_offset_ms
        self._stamped = stamped
        self._members = members
        self._ping = ping
        self._peer_name = peer_name
        self._wall = wall
        self._base_ns = self._wall_minus_mono()  # as of the last update()
        self._samples: dict[str, deque[Sample]] = {}
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._logged: dict[str, float] = {}
        self.offset_ms = 0.0
        self.fenced = False
        self.counters = {"timestamps_refused": 0, "writes_refused": 0, "probes_failed": 0}

    # ------------------------------------------------------------------ measuring

    def _wall_minus_mono(self) -> int:
        return self._wall() - mono_ns()

    def handle_ping(self, _body: bytes) -> bytes:
        return PING_REPLY.pack(self._wall())

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.PING, self.handle_ping)

    async def probe(self, node_id: str) -> None:
        """One round trip to `node_id`, added to its samples."""
        sent_wall, sent_mono, base = self._wall(), time.monotonic(), self._wall_minus_mono()
        try:
            reply = await self._ping(node_id, PROBE_TIMEOUT_S)
        except (rpc.PeerUnavailable, rpc.RpcError):
            self.counters["probes_failed"] += 1
            return
        if len(reply) != PING_REPLY.size:
            return  # a peer that does not report its clock
        (peer_ns,) = PING_REPLY.unpack(reply)
        samples = self._samples.setdefault(node_id, deque(maxlen=SAMPLES_PER_PEER))
        samples.append(sample(sent_wall, sent_mono, time.monotonic(), peer_ns, base))

    def peer_offsets(self) -> dict[str, float]:
        """Each current member's offset (its clock minus ours, ms) from its recent samples."""
        horizon = time.monotonic() - SAMPLE_MAX_AGE_S
        members = set(self._members())
        base = self._wall_minus_mono()
        offsets = {}
        for node_id in list(self._samples):
            if node_id not in members:
                del self._samples[node_id]
                continue
            recent = [s for s in self._samples[node_id] if s.taken_at >= horizon]
            offset = best_offset(recent, base)
            if offset is not None:
                offsets[node_id] = offset
        return offsets

    def update(self) -> None:
        """Recompute this node's offset and whether it may stamp writes."""
        self._base_ns = self._wall_minus_mono()
        offsets = list(self.peer_offsets().values())
        self.offset_ms = own_offset(offsets)
        fenced = beyond_majority(offsets, len(self._members()), self.max_offset_ms / 2)
        if fenced != self.fenced:
            log.warning(
                "clock offset %+.3f s from the majority of the peers (limit ±%.3f s): %s",
                self.offset_ms / 1000,
                self.max_offset_ms / 2000,
                "this node refuses to coordinate writes until its clock is fixed"
                if fenced
                else "this node coordinates writes again",
            )
        self.fenced = fenced

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.gather(*(self.probe(n) for n in self._members()))
                self.update()
            except Exception:
                log.exception("clock offset probe failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), PROBE_INTERVAL_S)
            except TimeoutError:
                pass

    def remeasure_soon(self) -> None:
        """Measure now rather than at the next interval: a replica refused one of this node's
        timestamps, so its clock may just have jumped."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    # ------------------------------------------------------------------ deciding

    def physical_ms(self) -> int:
        """The majority's wall clock as this node estimates it: what TTLs count from. Between
        updates it runs on the monotonic clock, so a step of the wall clock changes nothing."""
        return int((mono_ns() + self._base_ns) // 1_000_000 - self.offset_ms)

    def hlc_ahead_ms(self) -> int:
        """How far this node's newest stamp lies ahead of the majority's time: after its clock
        ran ahead and was set back, its hybrid clock stays ahead until time catches up."""
        return max(0, millis_of(self._stamped()) - self.physical_ms())

    def refusal(self) -> str | None:
        """Why this node must not stamp writes now, or None."""
        limit_ms = self.max_offset_ms / 2
        if abs(self._wall_minus_mono() - self._base_ns) > STEP_NS:
            self.update()  # the wall clock stepped since the last measurement
        if self.fenced:
            return (
                f"this node's clock is {self.offset_ms / 1000:+.3f} s off the majority of the "
                f"cluster (more than half of max_clock_offset_ms={self.max_offset_ms}): it "
                "refuses to coordinate writes until its clock is fixed (NTP); reads still "
                "work, and other nodes accept writes"
            )
        ahead = self.hlc_ahead_ms()
        if ahead > limit_ms:
            return (
                f"this node's hybrid clock is {ahead / 1000:+.3f} s ahead of the majority's "
                "time (its clock ran ahead and was set back): it refuses to coordinate writes "
                "until time catches up with it; reads still work, and other nodes accept writes"
            )
        return None

    def check_can_stamp(self) -> None:
        """Raise ClockOffsetUnavailable when this node must not coordinate a write."""
        # Every write asks: the usual answer (no step, not fenced, not ahead) in one reading
        # of each clock, the same arithmetic as refusal() and physical_ms().
        mono = mono_ns()
        if not self.fenced and abs(self._wall() - mono - self._base_ns) <= STEP_NS:
            physical = int((mono + self._base_ns) // 1_000_000 - self.offset_ms)
            if millis_of(self._stamped()) - physical <= self.max_offset_ms / 2:
                return
        reason = self.refusal()
        if reason is not None:
            self.counters["writes_refused"] += 1
            raise ClockOffsetUnavailable(reason, retry_after=1.0)

    def admit(self, ts: int) -> None:
        """Raise TimestampRefused unless `ts` is at most the maximum offset ahead of this
        node's physical time (a node that lags the majority still takes its peers' data);
        a refusal is logged with the RPC peer that sent it."""
        now_ms = int((mono_ns() + self._base_ns) // 1_000_000 - self.offset_ms)  # physical_ms
        if 0 <= ts <= MAX_TIMESTAMP and (ts >> LOGICAL_BITS) <= now_ms + self.max_offset_ms:
            return
        self.counters["timestamps_refused"] += 1
        ahead_s = ahead_ms(ts, now_ms) / 1000 if 0 <= ts <= MAX_TIMESTAMP else float("inf")
        message = (
            f"timestamp {ts} refused: {ahead_s:.3f} s ahead of this node's clock, "
            f"beyond max_clock_offset_ms={self.max_offset_ms}"
        )
        address = rpc.current_peer()
        source = self._peer_name(address) if address else "this node"
        last = self._logged.get(source, -LOG_EVERY_S)
        if time.monotonic() - last >= LOG_EVERY_S:
            self._logged[source] = time.monotonic()
            log.warning("%s from %s", message, source)
        raise TimestampRefused(message)

    def stats(self) -> dict:
        offsets = self.peer_offsets()
        return {
            "offset_ms": round(self.offset_ms, 3),
            "max_offset_ms": self.max_offset_ms,
            "writes_allowed": self.refusal() is None,
            "hlc_ahead_of_majority_ms": self.hlc_ahead_ms(),
            "peers_measured": len(offsets),
            "peer_offsets_ms": {node: round(v, 3) for node, v in sorted(offsets.items())},
            **self.counters,
        }
