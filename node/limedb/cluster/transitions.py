"""Ring transitions as pure decisions: validate a join, leave, replace or RF change, plan
exactly the token ranges whose replicas change, and step the transition record through its
phases (proposed -> streaming -> committed -> cleanup -> done, or rolled_back).

Nothing here does I/O or reads a clock: callers pass `now_ms`, the committed ring and RF, and
what they know of liveness, and get back immutable values to gossip, persist and act on.
The protocol these values serve is written down in docs/transitions.md.

Ranges are computed over the union of both rings' vnode tokens: between two consecutive
tokens of that union neither ring changes owner, so each elementary segment has one replica
set before and one after. Adjacent segments with the same before/after sets are merged, and a
range never wraps (the segment that would wrap past 2**64-1 is cut at 0), so a range is always
one contiguous storage scan.
"""

from __future__ import annotations

import bisect
import functools
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

import orjson
import xxhash

from limedb.cluster.keys import MAX_TOKEN
from limedb.cluster.ring.placement import Ring, key_token


class Kind(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    REPLACE = "replace"
    SET_RF = "set_rf"


class Phase(StrEnum):
    PROPOSED = "proposed"
    STREAMING = "streaming"
    COMMITTED = "committed"
    CLEANUP = "cleanup"
    DONE = "done"
    ROLLED_BACK = "rolled_back"


FINISHED = frozenset({Phase.DONE, Phase.ROLLED_BACK})
# How far a transition has got: orders two copies of one transition record with equal
# versions, and is part of a ring record's rank (limedb.cluster.ring.record).
PHASE_RANK = {
    Phase.PROPOSED: 0,
    Phase.STREAMING: 1,
    Phase.COMMITTED: 2,
    Phase.CLEANUP: 3,
    Phase.DONE: 4,
    Phase.ROLLED_BACK: 4,
}


class TransitionRefused(ValueError):
    """A requested change that must not start; the message says why and what to do instead."""

    def __init__(self, message: str, running_id: str | None = None) -> None:
        super().__init__(message)
        self.running_id = running_id


class TransitionError(ValueError):
    """An illegal step of a running transition, or a record that does not decode."""


# ----------------------------------------------------------------------------- the request


@dataclass(frozen=True, slots=True)
class Change:
    """What an operator asked for. Build one with `join`, `leave`, `replace` or `set_rf`.

    For a replace, `node_id` is the dead node and `new_node_id` its replacement, which may be
    the same id (a stable pod name coming back on an empty disk).
    """

    kind: Kind
    node_id: str = ""
    url: str = ""
    new_node_id: str = ""
    rf: int = 0

    @classmethod
    def join(cls, node_id: str, url: str) -> Change:
        return cls(Kind.JOIN, node_id=node_id, url=url)

    @classmethod
    def leave(cls, node_id: str) -> Change:
        return cls(Kind.LEAVE, node_id=node_id)

    @classmethod
    def replace(cls, dead_node_id: str, new_node_id: str, new_url: str) -> Change:
        return cls(Kind.REPLACE, node_id=dead_node_id, url=new_url, new_node_id=new_node_id)

    @classmethod
    def set_rf(cls, rf: int) -> Change:
        return cls(Kind.SET_RF, rf=rf)

    @property
    def lost(self) -> frozenset[str]:
        """Nodes whose data cannot be read during this change (the dead node of a replace)."""
        return frozenset({self.node_id}) if self.kind is Kind.REPLACE else frozenset()

    @property
    def fresh(self) -> frozenset[str]:
        """Nodes of the new ring that start without data even if the old ring lists them."""
        return frozenset({self.new_node_id}) if self.kind is Kind.REPLACE else frozenset()

    def describe(self) -> str:
        if self.kind is Kind.JOIN:
            return f"join {self.node_id} ({self.url})"
        if self.kind is Kind.LEAVE:
            return f"leave {self.node_id}"
        if self.kind is Kind.REPLACE:
            return f"replace {self.node_id} by {self.new_node_id} ({self.url})"
        return f"set replication factor to {self.rf}"

    def to_record(self) -> dict:
        record: dict = {"kind": self.kind.value}
        if self.node_id:
            record["node_id"] = self.node_id
        if self.url:
            record["url"] = self.url
        if self.new_node_id:
            record["new_node_id"] = self.new_node_id
        if self.rf:
            record["rf"] = self.rf
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> Change:
        return cls(
            Kind(record["kind"]),
            node_id=str(record.get("node_id", "")),
            url=str(record.get("url", "")),
            new_node_id=str(record.get("new_node_id", "")),
            rf=int(record.get("rf", 0)),
        )


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class RangeMove:
    """Tokens start..end (inclusive, never wrapping) whose replica set changes.

    `sources` are the current replicas that hold the data, in the order to try them;
    `targets` are the new replicas that must receive it (empty when replicas only go away);
    `removed` are the current replicas that no longer own the range once committed.
    """

    start: int
    end: int
    old_replicas: tuple[str, ...]
    new_replicas: tuple[str, ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(n for n in self.old_replicas if n not in self.new_replicas)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, token: int) -> bool:
        return self.start <= token <= self.end

    def source_for(self, live: Collection[str]) -> str | None:
        """The first source that is live, or None when none is (wait, or roll back)."""
        return next((s for s in self.sources if s in live), None)


def _segments(old: Ring, new: Ring) -> list[tuple[int, int, int]]:
    """(start, end, probe token) for every elementary segment of the token space, in order."""
    boundaries = sorted(set(old.tokens) | set(new.tokens))
    segments = []
    prev = -1
    for token in boundaries:
        segments.append((prev + 1, token, token))
        prev = token
    if prev < MAX_TOKEN:
        # Tokens above the largest vnode token belong to the first vnode (wrap-around).
        segments.append((prev + 1, MAX_TOKEN, MAX_TOKEN))
    return segments


def plan_moves(
    old_ring: Ring,
    old_rf: int,
    new_ring: Ring,
    new_rf: int,
    *,
    lost: Collection[str] = (),
    fresh: Collection[str] = (),
    prefer: Collection[str] = (),
) -> tuple[RangeMove, ...]:
    """Every token range whose replica set changes from (old_ring, old_rf) to (new_ring, new_rf).

    `lost` nodes cannot serve as sources; `fresh` nodes get streamed to even where the old ring
    already lists them; `prefer` nodes come first among sources (a leaving node hands off its
    own ranges). Ranges are in token order; ranges that keep their replicas are absent.
    """
    lost, fresh, prefer = frozenset(lost), frozenset(fresh), frozenset(prefer)
    moves: list[RangeMove] = []
    for start, end, probe in _segments(old_ring, new_ring):
        old = old_ring.replicas(probe, old_rf)
        new = new_ring.replicas(probe, new_rf)
        holders = [n for n in old if n not in lost and n not in fresh]
        targets = tuple(n for n in new if n not in holders)
        if set(old) == set(new) and not targets:
            continue
        sources = tuple(sorted(holders, key=lambda n: n not in prefer))  # stable: keeps ring order
        last = moves[-1] if moves else None
        if (
            last is not None
            and last.end + 1 == start
            and (last.old_replicas, last.new_replicas, last.sources, last.targets)
            == (old, new, sources, targets)
        ):
            moves[-1] = replace(last, end=end)
        else:
            moves.append(RangeMove(start, end, old, new, sources, targets))
    return tuple(moves)


@functools.lru_cache(maxsize=16)
def _plan_for(old_ring: Ring, old_rf: int, new_ring: Ring, new_rf: int, change: Change):
    # Records are decoded on every gossip round; the plan they imply only changes with them.
    prefer = (change.node_id,) if change.kind is Kind.LEAVE else ()
    return plan_moves(
        old_ring, old_rf, new_ring, new_rf, lost=change.lost, fresh=change.fresh, prefer=prefer
    )


@functools.lru_cache(maxsize=16)
def _plan_digest_for(old_ring: Ring, old_rf: int, new_ring: Ring, new_rf: int, change: Change):
    # Every record of a transition is encoded and decoded with its plan's digest (gossip,
    # persistence): computed once per plan.
    return _moves_digest(_plan_for(old_ring, old_rf, new_ring, new_rf, change))


def _moves_digest(moves: Sequence[RangeMove]) -> str:
    h = xxhash.xxh64()
    for m in moves:
        h.update(orjson.dumps([m.start, m.end, m.old_replicas, m.new_replicas, m.sources]))
        h.update(orjson.dumps(m.targets))
    return h.hexdigest()


# ----------------------------------------------------------------------------- write sets


def quorum_met(
    acked: Collection[str], old: Sequence[str], new: Sequence[str], w_old: int, w_new: int
) -> bool:
    """The transition write rule: W acknowledgements from the old replicas AND W from the new.

    A node in both sets counts for both. Each W is capped at its set's size.
    """
    acked = set(acked)
    return sum(n in acked for n in old) >= min(w_old, len(old)) and sum(
        n in acked for n in new
    ) >= min(w_new, len(new))


@dataclass(frozen=True, slots=True)
class WriteSet:
    """Where a write goes during a transition, and when it counts as acknowledged."""

    old: tuple[str, ...]
    new: tuple[str, ...]
    # Old replicas first, then the new ones they do not already include (made once: a
    # transition's write sets are built per segment and asked for by every write).
    all: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all", self.old + tuple(n for n in self.new if n not in self.old))

    def acknowledged(self, acked: Collection[str], required: Callable[[int], int]) -> bool:
        """`required(n)` is W for a replica set of n nodes (e.g. n // 2 + 1 for quorum)."""
        return quorum_met(
            acked, self.old, self.new, required(len(self.old)), required(len(self.new))
        )


@dataclass(frozen=True, slots=True)
class _Segment:
    """Where a key of one elementary segment goes in each phase (see `_Routes`)."""

    both: WriteSet  # proposed, streaming, committed: old and new owners
    new: WriteSet  # cleanup, done
    old: WriteSet  # rolled back
    reads_before_commit: tuple[str, ...]  # the old owners, fresh nodes left out
    reads_after_commit: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Routes:
    """A transition's routing by elementary segment of the union of both rings' tokens, so a
    key is routed with one hash and one bisect (every request during a transition)."""

    bounds: list[int]
    segments: tuple[_Segment, ...]

    def segment(self, key: bytes | str | int) -> _Segment:
        token = xxhash.xxh64_intdigest(key) if type(key) is bytes else key_token(key)
        i = bisect.bisect_left(self.bounds, token)
        # Past the largest token both rings wrap to their first token: segment 0's owners.
        return self.segments[i if i < len(self.segments) else 0]


@functools.lru_cache(maxsize=4)
def _routes_for(
    old_ring: Ring, old_rf: int, new_ring: Ring, new_rf: int, fresh: frozenset[str]
) -> _Routes:
    # Between two consecutive tokens of the union neither ring changes owner (module doc), so
    # the replicas of a segment's last token are those of every key in it.
    bounds = sorted(set(old_ring.tokens) | set(new_ring.tokens))
    segments = []
    for token in bounds:
        old = old_ring.replicas(token, old_rf)
        new = new_ring.replicas(token, new_rf)
        if new == old:
            new = old  # one object: the coordinator's single-group test is an identity check
        segments.append(
            _Segment(
                both=WriteSet(old, new),
                new=WriteSet(new, new),
                old=WriteSet(old, old),
                reads_before_commit=tuple(n for n in old if n not in fresh),
                reads_after_commit=new,
            )
        )
    return _Routes(bounds, tuple(segments))


# ----------------------------------------------------------------------------- progress


@dataclass(frozen=True, slots=True)
class StreamProgress:
    """How far one target has received its ranges (its moves in token order).

    Moves before `index` are complete; within move `index`, tokens before `cursor` are
    (None: nothing of it yet). A restart resumes at (index, cursor).
    """

    index: int = 0
    cursor: int | None = None
    keys: int = 0
    bytes: int = 0

    def to_record(self) -> list:
        return [self.index, self.cursor, self.keys, self.bytes]

    @classmethod
    def from_record(cls, record: Sequence) -> StreamProgress:
        index, cursor, keys, nbytes = record
        return cls(int(index), None if cursor is None else int(cursor), int(keys), int(nbytes))


@dataclass(frozen=True, slots=True)
class ProgressSummary:
    """Totals for `limedb admin status`."""

    ranges_total: int
    ranges_done: int
    keys: int
    bytes: int
    fraction: float  # of the tokens to stream, by token count
    elapsed_s: float
    keys_per_s: float
    bytes_per_s: float
    eta_s: float | None

    def to_record(self) -> dict:
        return {
            "ranges_total": self.ranges_total,
            "ranges_done": self.ranges_done,
            "keys": self.keys,
            "bytes": self.bytes,
            "fraction": round(self.fraction, 6),
            "elapsed_s": round(self.elapsed_s, 3),
            "keys_per_s": round(self.keys_per_s, 1),
            "bytes_per_s": round(self.bytes_per_s, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Transition:
    """One ring change in flight: the committed ring (epoch e) and the proposed one (e+1).

    Immutable; every step returns a new value with `version` + 1, so of two copies of the same
    transition the higher version is the newer (`newer_than`). The plan (`moves`) is derived
    from the rings, the RFs and the change, so the record carries only its digest.
    """

    id: str
    change: Change
    phase: Phase
    old_ring: Ring
    new_ring: Ring
    old_rf: int
    new_rf: int
    started_ms: int
    updated_ms: int
    version: int = 0
    progress: Mapping[str, StreamProgress] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "progress", MappingProxyType(dict(self.progress)))

    @property
    def kind(self) -> Kind:
        return self.change.kind

    @property
    def active(self) -> bool:
        return self.phase not in FINISHED

    # ------------------------------------------------------------------ the plan

    @property
    def moves(self) -> tuple[RangeMove, ...]:
        return _plan_for(self.old_ring, self.old_rf, self.new_ring, self.new_rf, self.change)

    def _plan_digest(self) -> str:
        return _plan_digest_for(self.old_ring, self.old_rf, self.new_ring, self.new_rf, self.change)

    def streams(self) -> Mapping[str, tuple[int, ...]]:
        """target node -> indexes into `moves` it must receive, in token order."""
        return self._streams

    @functools.cached_property
    def _streams(self) -> Mapping[str, tuple[int, ...]]:
        out: dict[str, list[int]] = {}
        for i, move in enumerate(self.moves):
            for target in move.targets:
                out.setdefault(target, []).append(i)
        return MappingProxyType({t: tuple(indexes) for t, indexes in sorted(out.items())})

    def progress_of(self, target: str) -> StreamProgress:
        return self.progress.get(target, StreamProgress())

    def stream_done(self, target: str) -> bool:
        return self.progress_of(target).index >= len(self.streams().get(target, ()))

    def pending_streams(self) -> list[str]:
        return [t for t in self.streams() if not self.stream_done(t)]

    def range_state(self, move_index: int) -> dict[str, str]:
        """target -> "done" | "streaming" | "pending" for one move."""
        states = {}
        for target in self.moves[move_index].targets:
            position = self.streams()[target].index(move_index)
            p = self.progress_of(target)
            if position < p.index:
                states[target] = "done"
            elif position == p.index and p.cursor is not None:
                states[target] = "streaming"
            else:
                states[target] = "pending"
        return states

    def next_range(self, target: str) -> tuple[RangeMove, int] | None:
        """The move `target` streams next and the token to resume from, or None when done."""
        indexes = self.streams().get(target, ())
        p = self.progress_of(target)
        if p.index >= len(indexes):
            return None
        move = self.moves[indexes[p.index]]
        return move, move.start if p.cursor is None else p.cursor

    def cleanup_ranges(self) -> dict[str, list[RangeMove]]:
        """node -> ranges it deletes: after commit the ones it lost, after a rollback the ones
        it received (their writes also went to the old replicas, which keep them)."""
        out: dict[str, list[RangeMove]] = {}
        for move in self.moves:
            nodes = move.targets if self.phase is Phase.ROLLED_BACK else move.removed
            for node in nodes:
                out.setdefault(node, []).append(move)
        return out

    # ------------------------------------------------------------------ routing

    def write_set(self, key: bytes | str | int) -> WriteSet:
        """Replicas a write goes to in the current phase, with its acknowledgement rule.

        Until every node has seen the commit, writes go to old AND new owners; once cleanup
        starts only the new owners; after a rollback only the old ones.
        """
        segment = self._routes.segment(key)
        if self.phase in (Phase.CLEANUP, Phase.DONE):
            return segment.new
        if self.phase is Phase.ROLLED_BACK:
            return segment.old
        return segment.both

    def read_replicas(self, key: bytes | str | int) -> tuple[str, ...]:
        """Replicas reads ask: the old owners until commit (never a node still being filled),
        then the new owners."""
        segment = self._routes.segment(key)
        if self.phase is Phase.ROLLED_BACK:
            return segment.old.old
        if self.phase in (Phase.PROPOSED, Phase.STREAMING):
            return segment.reads_before_commit
        return segment.reads_after_commit

    @functools.cached_property
    def _routes(self) -> _Routes:
        # Shared by every version of the record (the rings are interned, see Ring.from_record).
        return _routes_for(
            self.old_ring, self.old_rf, self.new_ring, self.new_rf, self.change.fresh
        )

    # ------------------------------------------------------------------ steps

    def _step(self, now_ms: int, **changes) -> Transition:
        return replace(self, version=self.version + 1, updated_ms=now_ms, **changes)

    def _require(self, *phases: Phase, to: str) -> None:
        if self.phase not in phases:
            allowed = " or ".join(p.value for p in phases)
            raise TransitionError(
                f"transition {self.id} cannot {to} in phase {self.phase.value} (needs {allowed})"
            )

    def begin_streaming(self, now_ms: int) -> Transition:
        self._require(Phase.PROPOSED, to="start streaming")
        return self._step(now_ms, phase=Phase.STREAMING)

    def record_progress(
        self,
        target: str,
        *,
        index: int,
        cursor: int | None,
        keys: int,
        nbytes: int,
        now_ms: int,
    ) -> Transition:
        """Set a target's progress (absolute values; must not go backwards)."""
        self._require(Phase.STREAMING, to="record progress")
        indexes = self.streams().get(target)
        if indexes is None:
            raise TransitionError(f"{target} receives no ranges in transition {self.id}")
        if not 0 <= index <= len(indexes):
            raise TransitionError(f"range index {index} outside 0..{len(indexes)} for {target}")
        if cursor is not None and (
            index == len(indexes) or cursor not in self.moves[indexes[index]]
        ):
            raise TransitionError(f"cursor {cursor} is not inside range {index} of {target}")
        old = self.progress_of(target)
        position = (index, -1 if cursor is None else cursor)
        before = (old.index, -1 if old.cursor is None else old.cursor)
        if position < before or keys < old.keys or nbytes < old.bytes:
            raise TransitionError(f"progress of {target} cannot go backwards")
        progress = {**self.progress, target: StreamProgress(index, cursor, keys, nbytes)}
        return self._step(now_ms, progress=progress)

    def commit(self, now_ms: int) -> Transition:
        """Reads move to the new owners; only when every target has every range."""
        self._require(Phase.STREAMING, to="commit")
        pending = self.pending_streams()
        if pending:
            raise TransitionError(
                f"transition {self.id} cannot commit: still streaming to {', '.join(pending)}"
            )
        return self._step(now_ms, phase=Phase.COMMITTED)

    def begin_cleanup(self, now_ms: int) -> Transition:
        self._require(Phase.COMMITTED, to="start cleanup")
        return self._step(now_ms, phase=Phase.CLEANUP)

    def finish(self, now_ms: int) -> Transition:
        self._require(Phase.CLEANUP, to="finish")
        return self._step(now_ms, phase=Phase.DONE)

    def roll_back(self, reason: str, now_ms: int) -> Transition:
        """Abandon the change; only before commit, since reads have not moved yet."""
        if self.phase in (Phase.COMMITTED, Phase.CLEANUP, Phase.DONE):
            raise TransitionError(
                f"transition {self.id} is {self.phase.value}: reads already use the new "
                f"owners, so it can only go forward"
            )
        self._require(Phase.PROPOSED, Phase.STREAMING, to="roll back")
        return self._step(now_ms, phase=Phase.ROLLED_BACK, reason=reason)

    def committed_ring(self) -> tuple[Ring, int]:
        """The ring and RF that own keys for reads right now."""
        if self.phase in (Phase.COMMITTED, Phase.CLEANUP, Phase.DONE):
            return self.new_ring, self.new_rf
        return self.old_ring, self.old_rf

    def newer_than(self, other: Transition | None) -> bool:
        """Whether this copy should replace `other` (gossip and persistence keep the newest).

        Same transition: higher version, then further phase. Different transitions: the one
        proposing the higher epoch; an active one beats a finished one of the same epoch.
        """
        if other is None:
            return True
        if self.id == other.id:
            return (self.version, PHASE_RANK[self.phase]) > (
                other.version,
                PHASE_RANK[other.phase],
            )
        if self.new_ring.epoch != other.new_ring.epoch:
            return self.new_ring.epoch > other.new_ring.epoch
        if self.active != other.active:
            return self.active
        return self.id > other.id

    # ------------------------------------------------------------------ status

    def summary(self, now_ms: int) -> ProgressSummary:
        streams, moves = self.streams(), self.moves
        total_tokens = done_tokens = ranges_total = ranges_done = keys = nbytes = 0
        for target, indexes in streams.items():
            p = self.progress_of(target)
            keys += p.keys
            nbytes += p.bytes
            ranges_total += len(indexes)
            ranges_done += min(p.index, len(indexes))
            for position, i in enumerate(indexes):
                move = moves[i]
                total_tokens += move.size
                if position < p.index:
                    done_tokens += move.size
                elif position == p.index and p.cursor is not None:
                    done_tokens += p.cursor - move.start
        fraction = 1.0 if total_tokens == 0 else done_tokens / total_tokens
        if self.phase in (Phase.COMMITTED, Phase.CLEANUP, Phase.DONE):
            fraction = 1.0
        elapsed = max(now_ms - self.started_ms, 0) / 1000
        rate_k = keys / elapsed if elapsed > 0 else 0.0
        rate_b = nbytes / elapsed if elapsed > 0 else 0.0
        eta = None
        if fraction >= 1.0:
            eta = 0.0
        elif fraction > 0 and elapsed > 0:
            eta = elapsed * (1 - fraction) / fraction
        return ProgressSummary(
            ranges_total, ranges_done, keys, nbytes, fraction, elapsed, rate_k, rate_b, eta
        )

    def status(self, now_ms: int, summary: ProgressSummary | None = None) -> dict:
        """The `transition` object of `limedb admin status --json` (`summary`: this
        transition's `summary(now_ms)`, if the caller has it already)."""
        if summary is None:
            summary = self.summary(now_ms)
        return {
            "id": self.id,
            "kind": self.kind.value,
            "change": self.change.describe(),
            "phase": self.phase.value,
            "from_epoch": self.old_ring.epoch,
            "to_epoch": self.new_ring.epoch,
            "progress": summary.to_record(),
            "reason": self.reason or None,
        }

    # ------------------------------------------------------------------ records

    def to_record(self) -> dict:
        """JSON-able: gossiped with the ring and persisted on every node."""
        moves = self.moves
        return {
            "id": self.id,
            "change": self.change.to_record(),
            "phase": self.phase.value,
            "old_ring": self.old_ring.to_record(),
            "new_ring": self.new_ring.to_record(),
            "old_rf": self.old_rf,
            "new_rf": self.new_rf,
            "started_ms": self.started_ms,
            "updated_ms": self.updated_ms,
            "version": self.version,
            "progress": {t: p.to_record() for t, p in sorted(self.progress.items())},
            "reason": self.reason,
            "plan": {"ranges": len(moves), "digest": self._plan_digest()},
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_record())

    @classmethod
    def from_record(cls, record: Mapping) -> Transition:
        try:
            transition = cls(
                id=str(record["id"]),
                change=Change.from_record(record["change"]),
                phase=Phase(record["phase"]),
                old_ring=Ring.from_record(record["old_ring"]),
                new_ring=Ring.from_record(record["new_ring"]),
                old_rf=int(record["old_rf"]),
                new_rf=int(record["new_rf"]),
                started_ms=int(record["started_ms"]),
                updated_ms=int(record["updated_ms"]),
                version=int(record["version"]),
                progress={
                    str(t): StreamProgress.from_record(p)
                    for t, p in dict(record.get("progress", {})).items()
                },
                reason=str(record.get("reason", "")),
            )
            plan = record["plan"]
        except (KeyError, TypeError, ValueError) as exc:
            raise TransitionError(f"bad transition record: {exc!r}") from exc
        moves = transition.moves
        if plan.get("ranges") != len(moves) or plan.get("digest") != transition._plan_digest():
            # Another version of this code planned different ranges: acting on ours would
            # stream or delete the wrong ones.
            raise TransitionError(
                f"transition {transition.id}: the plan in the record does not match this "
                f"node's plan ({plan.get('ranges')} vs {len(moves)} ranges)"
            )
        return transition

    @classmethod
    def from_json(cls, data: bytes | str) -> Transition:
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise TransitionError(f"bad transition record: {exc}") from exc
        if not isinstance(record, dict):
            raise TransitionError("bad transition record: not an object")
        return cls.from_record(record)


# ----------------------------------------------------------------------------- proposing


def _refuse_if_running(running: Transition | None) -> None:
    if running is not None and running.active:
        raise TransitionRefused(
            f"transition {running.id} ({running.change.describe()}, phase "
            f"{running.phase.value}) is still running; wait for it to finish or roll it back",
            running_id=running.id,
        )


def _validate(ring: Ring, rf: int, change: Change, live: Collection[str] | None) -> None:
    members = ring.members
    epoch = ring.epoch
    if change.kind is Kind.JOIN:
        if not change.node_id or not change.url:
            raise TransitionRefused("a join needs the new node's id and URL")
        if change.node_id in members:
            raise TransitionRefused(
                f"node {change.node_id} is already a member of the ring (epoch {epoch})"
            )
        other = ring.node_id_of_url(change.url)
        if other is not None:
            raise TransitionRefused(f"URL {change.url} already belongs to member {other}")
    elif change.kind is Kind.LEAVE:
        if change.node_id not in members:
            raise TransitionRefused(
                f"node {change.node_id or '(none)'} is not a member of the ring "
                f"(members: {', '.join(members)})"
            )
        remaining = len(members) - 1
        if remaining == 0:
            raise TransitionRefused(f"node {change.node_id} is the last member; it cannot leave")
        if remaining < rf:
            raise TransitionRefused(
                f"leaving {change.node_id} would leave {remaining} node"
                f"{'s' if remaining != 1 else ''}, fewer than the replication factor {rf}; "
                f"lower the replication factor first (set RF to {remaining}) or join a node"
            )
    elif change.kind is Kind.REPLACE:
        if change.node_id not in members:
            raise TransitionRefused(f"node {change.node_id or '(none)'} is not a member to replace")
        if not change.new_node_id or not change.url:
            raise TransitionRefused("a replace needs the new node's id and URL")
        if change.new_node_id != change.node_id and change.new_node_id in members:
            raise TransitionRefused(f"node {change.new_node_id} is already a member")
        other = ring.node_id_of_url(change.url)
        if other is not None and other != change.node_id:
            raise TransitionRefused(f"URL {change.url} already belongs to member {other}")
        if live is not None and change.node_id in live:
            raise TransitionRefused(
                f"node {change.node_id} is alive; replace is for dead nodes (use leave to "
                f"decommission a live one)"
            )
    elif change.kind is Kind.SET_RF:
        if change.rf < 1:
            raise TransitionRefused("the replication factor must be at least 1")
        if change.rf > len(members):
            raise TransitionRefused(
                f"replication factor {change.rf} needs at least {change.rf} members; the ring "
                f"has {len(members)}"
            )
        if change.rf == rf:
            raise TransitionRefused(f"the replication factor is already {rf}")


def _new_ring(ring: Ring, change: Change) -> tuple[Ring, int | None]:
    if change.kind is Kind.JOIN:
        return ring.with_member(change.node_id, change.url), None
    if change.kind is Kind.LEAVE:
        return ring.without_member(change.node_id), None
    if change.kind is Kind.REPLACE:
        members = {k: v for k, v in ring.members.items() if k != change.node_id}
        members[change.new_node_id] = change.url
        return Ring(members, ring.vnodes, ring.epoch + 1), None
    return Ring(dict(ring.members), ring.vnodes, ring.epoch + 1), change.rf


def propose(
    ring: Ring,
    rf: int,
    change: Change,
    *,
    now_ms: int,
    running: Transition | None = None,
    live: Collection[str] | None = None,
    accept_loss: bool = False,
    transition_id: str | None = None,
) -> Transition:
    """Validate `change` against the committed `ring` (epoch e) and RF, and return the
    proposed transition to ring e+1, or raise TransitionRefused with the reason.

    `live` (node ids the failure detector holds alive), when given, lets a replace refuse a
    node that is not dead. A replace that would lose ranges with no other replica (RF=1) is
    refused unless `accept_loss`.
    """
    _refuse_if_running(running)
    _validate(ring, rf, change, live)
    new_ring, new_rf = _new_ring(ring, change)
    transition = Transition(
        id=transition_id or f"{change.kind.value}-e{new_ring.epoch}-{secrets.token_hex(3)}",
        change=change,
        phase=Phase.PROPOSED,
        old_ring=ring,
        new_ring=new_ring,
        old_rf=rf,
        new_rf=rf if new_rf is None else new_rf,
        started_ms=now_ms,
        updated_ms=now_ms,
    )
    if change.kind is Kind.REPLACE and not accept_loss:
        orphaned = [m for m in transition.moves if m.targets and not m.sources]
        if orphaned:
            raise TransitionRefused(
                f"replacing {change.node_id} loses data: {len(orphaned)} range(s) had no "
                f"other replica (replication factor {rf}); accept the loss explicitly to "
                f"take them over empty"
            )
    return transition
