"""Gossip as a pure state machine: SYN / ACK / ACK2 exchanges over plain JSON-able dicts.

Every node keeps a heartbeat state per known node {generation, version, advertise_url,
status} and the newest ring record. Once per round a node bumps its own version and sends a
SYN (digests: node -> [generation, version], plus its ring's epoch and digest) to a peer. The
peer answers with an ACK holding the states it has that are newer and naming the ones it
wants; the initiator applies the ACK and answers with an ACK2 holding what was asked for.
Three messages, and both sides end up with the newer of every state and of the ring.

Newer means a higher (generation, version): the generation changes only when a process
restarts (its start time in milliseconds, `start_generation`), the version counts rounds
within one run. No I/O here: `limedb.cluster.membership`
moves the messages and feeds heartbeat arrivals to the failure detector through the
`on_update` hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from limedb.cluster.ring.placement import Ring

SYN, ACK, ACK2 = "syn", "ack", "ack2"
# The cluster-level state of a node as the node itself announces it (liveness is not here:
# every node judges that for itself with its failure detector).
STATUSES = frozenset({"normal", "joining", "leaving", "left"})


def start_generation(now_ns: int | None = None) -> int:
    """A new process's generation: the Unix time in milliseconds.

    Seconds were too coarse: a node killed and back within the second it first started in got
    the generation of its former self, and its seeds then answered "not heard before" to a
    member back on an empty disk (limedb.cluster.rejoin), which was not replaced. A process
    takes far longer than a millisecond to start, so every run of a node gets a newer one."""
    return (time.time_ns() if now_ns is None else now_ns) // 1_000_000


class GossipError(ValueError):
    """A malformed gossip message (the transport answers it with a 400)."""


@dataclass(frozen=True, slots=True)
class HeartbeatState:
    """What a node announces about itself; ordered by (generation, version)."""

    generation: int
    version: int
    advertise_url: str
    status: str = "normal"
    internal_addr: str = ""

    @property
    def clock(self) -> tuple[int, int]:
        return (self.generation, self.version)

    def to_wire(self) -> dict:
        return {
            "generation": self.generation,
            "version": self.version,
            "advertise_url": self.advertise_url,
            "status": self.status,
            "internal_addr": self.internal_addr,
        }

    @classmethod
    def from_wire(cls, data: object) -> HeartbeatState:
        if not isinstance(data, Mapping):
            raise GossipError("heartbeat state must be an object")
        try:
            state = cls(
                generation=_nonneg_int(data["generation"]),
                version=_nonneg_int(data["version"]),
                advertise_url=_str(data["advertise_url"]),
                status=_str(data.get("status", "normal")),
                internal_addr=_str(data.get("internal_addr", "")),
            )
        except KeyError as exc:
            raise GossipError(f"heartbeat state lacks {exc}") from exc
        if state.status not in STATUSES:
            raise GossipError(f"unknown node status {state.status!r}")
        return state


def _nonneg_int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise GossipError(f"expected a non-negative integer, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise GossipError(f"expected a string, got {value!r}")
    return value


def _message(msg: object, kind: str) -> Mapping:
    if not isinstance(msg, Mapping) or msg.get("type") != kind:
        raise GossipError(f"expected a gossip {kind} message")
    if not isinstance(msg.get("from"), str) or not msg["from"]:
        raise GossipError("gossip message lacks its sender")
    return msg


# (node_id, previous state or None, new state): called for every state that got newer.
UpdateHook = Callable[[str, HeartbeatState | None, HeartbeatState], None]
RingHook = Callable[[Ring], None]


class GossipState:
    """One node's gossip knowledge and the three handlers of an exchange.

    Single-threaded by design: the event loop that owns the node calls it.
    """

    def __init__(
        self,
        node_id: str,
        advertise_url: str,
        generation: int,
        ring: Ring | None = None,
        *,
        status: str = "normal",
        internal_addr: str = "",
        on_update: UpdateHook | None = None,
        on_ring: RingHook | None = None,
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown node status {status!r}")
        self.node_id = node_id
        self.ring = ring
        self.on_update = on_update
        self.on_ring = on_ring
        self.states: dict[str, HeartbeatState] = {
            node_id: HeartbeatState(generation, 0, advertise_url, status, internal_addr)
        }

    # ----------------------------------------------------------------- own state

    @property
    def own(self) -> HeartbeatState:
        return self.states[self.node_id]

    def beat(self) -> HeartbeatState:
        """Advance our own version: once per gossip round, so peers see that we are alive."""
        self.states[self.node_id] = replace(self.own, version=self.own.version + 1)
        return self.own

    def set_status(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown node status {status!r}")
        self.states[self.node_id] = replace(self.own, status=status, version=self.own.version + 1)

    def set_advertise_url(self, url: str) -> None:
        self.states[self.node_id] = replace(
            self.own, advertise_url=url, version=self.own.version + 1
        )

    def adopt_ring(self, ring: Ring) -> bool:
        """Take `ring` if it is newer than ours; returns whether it was taken."""
        if ring.newer_than(self.ring):
            self.ring = ring
            if self.on_ring is not None:
                self.on_ring(ring)
            return True
        return False

    # ----------------------------------------------------------------- digests and merging

    def digests(self) -> dict[str, list[int]]:
        return {node_id: [s.generation, s.version] for node_id, s in self.states.items()}

    def _ring_digest(self) -> dict | None:
        if self.ring is None:
            return None
        epoch, members, digest = self.ring.rank()
        return {"epoch": epoch, "members": members, "digest": digest}

    @staticmethod
    def _their_rank(theirs: object) -> tuple[int, int, int]:
        if not isinstance(theirs, Mapping):
            raise GossipError("ring digest must be an object")
        return (
            _nonneg_int(theirs.get("epoch")),
            _nonneg_int(theirs.get("members", 0)),
            _nonneg_int(theirs.get("digest")),
        )

    def _ring_is_newer_than(self, theirs: object) -> bool:
        if self.ring is None:
            return False
        return theirs is None or self.ring.rank() > self._their_rank(theirs)

    def _wants_their_ring(self, theirs: object) -> bool:
        if theirs is None:
            return False
        return self.ring is None or self._their_rank(theirs) > self.ring.rank()

    def apply(self, updates: object) -> list[str]:
        """Merge states from a peer, keeping the newer of each; returns the ids that changed."""
        if not isinstance(updates, Mapping):
            raise GossipError("updates must be an object")
        parsed = {_str(node_id): HeartbeatState.from_wire(s) for node_id, s in updates.items()}
        changed = []
        for node_id, theirs in parsed.items():
            if node_id == self.node_id:
                self._defend_own_generation(theirs)
                continue
            mine = self.states.get(node_id)
            if mine is None or theirs.clock > mine.clock:
                self.states[node_id] = theirs
                changed.append(node_id)
                if self.on_update is not None:
                    self.on_update(node_id, mine, theirs)
        return changed

    def _defend_own_generation(self, theirs: HeartbeatState) -> None:
        # Someone holds a newer state of ours than we do: an earlier run of this node (same
        # generation, or a clock that has since gone back). Jump past it, or peers would
        # ignore every heartbeat of this run as stale.
        if theirs.clock > self.own.clock:
            self.states[self.node_id] = replace(
                self.own, generation=theirs.generation + 1, version=0
            )

    def _apply_ring(self, record: object) -> None:
        if record is None:
            return
        if not isinstance(record, Mapping):
            raise GossipError("ring record must be an object")
        try:
            ring = Ring.from_record(record)
        except ValueError as exc:
            raise GossipError(str(exc)) from exc
        self.adopt_ring(ring)

    def _compare(self, digests: object) -> tuple[dict[str, dict], list[str]]:
        """Given a peer's digests: our newer states to send, and the ids we want from them."""
        if not isinstance(digests, Mapping):
            raise GossipError("digests must be an object")
        send: dict[str, dict] = {}
        want: list[str] = []
        for node_id, clock in digests.items():
            if (
                not isinstance(node_id, str)
                or not isinstance(clock, list | tuple)
                or len(clock) != 2
            ):
                raise GossipError(f"bad digest for {node_id!r}")
            theirs = (_nonneg_int(clock[0]), _nonneg_int(clock[1]))
            mine = self.states.get(node_id)
            if mine is None or theirs > mine.clock:
                want.append(node_id)
            elif mine.clock > theirs:
                send[node_id] = mine.to_wire()
        for node_id, mine in self.states.items():
            if node_id not in digests:
                send[node_id] = mine.to_wire()
        return send, want

    # ----------------------------------------------------------------- the exchange

    def make_syn(self) -> dict:
        return {
            "type": SYN,
            "from": self.node_id,
            "digests": self.digests(),
            "ring": self._ring_digest(),
        }

    def on_syn(self, msg: object) -> dict:
        """Answer a peer's SYN with an ACK: our newer states, and what we want of theirs."""
        msg = _message(msg, SYN)
        send, want = self._compare(msg.get("digests"))
        ring_digest = msg.get("ring")
        return {
            "type": ACK,
            "from": self.node_id,
            "updates": send,
            "requests": want,
            "ring": self.ring.to_record() if self._ring_is_newer_than(ring_digest) else None,
            "ring_request": self._wants_their_ring(ring_digest),
        }

    def on_ack(self, msg: object) -> dict:
        """Apply a peer's ACK and build the ACK2 carrying the states it asked for."""
        msg = _message(msg, ACK)
        requests = msg.get("requests", [])
        if not isinstance(requests, list):
            raise GossipError("requests must be a list")
        self.apply(msg.get("updates", {}))
        self._apply_ring(msg.get("ring"))
        updates = {
            node_id: self.states[node_id].to_wire()
            for node_id in requests
            if isinstance(node_id, str) and node_id in self.states
        }
        wants_ring = msg.get("ring_request") is True and self.ring is not None
        return {
            "type": ACK2,
            "from": self.node_id,
            "updates": updates,
            "ring": self.ring.to_record() if wants_ring else None,
        }

    def on_ack2(self, msg: object) -> None:
        msg = _message(msg, ACK2)
        self.apply(msg.get("updates", {}))
        self._apply_ring(msg.get("ring"))
