"""The verifier: after a transition (and on demand), check that every current replica of the
ranges it moved holds the same data, repair where they differ, and record what it found.

The node that drove a transition verifies it once it is done (`after_transition`); any node
verifies on demand (`POST /admin/verify`, `limedb admin verify`). A run asks every replica for
the Merkle roots of its ranges in one batched VERIFY_ROOTS call per node (depth-0 trees, the
same hashes anti-entropy compares, limedb.cluster.merkle), so ranges that agree cost one hash
each. Where roots differ, the replicas' trees are compared leaf by leaf twice, a short settle
apart (MERKLE, at the depth repair would use): a write in flight reaches its last replica a
moment later and writes rarely hit one leaf twice, so only leaves that differ both times are
damage. Their tokens are repaired by one of their replicas (this node if it is one, else over
VERIFY_REPAIR) with the anti-entropy repair (limedb.cluster.repair), and compared once more. The record of the run
(limedb.cluster.verification.Verification) is saved here and pushed to every member
(VERIFICATION), so any node answers for the newest one, also after a restart.

A run is paced to `verify_versions_per_s` per replica (roots asked ROOTS_PER_CALL ranges at a
time, the next call after the versions counted so far took their share of time; trees piece by
piece): hashing costs each replica ~5 µs of its serving process per version, and right after a
transition every replica of every moved range hashes them at once, which took the cores from
the client requests for as long as it ran (docs/benchmarks.md, Migration).

VERIFY_ROOTS is `[u64 purged_before_ts][u32 n]` then n `[u64 start][u64 end]`; its reply is n
`[16-byte root][u32 versions]`. VERIFY_REPAIR and VERIFICATION carry JSON.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from limedb.cluster import rpc
from limedb.cluster.merkle import HASH_BYTES, MerkleTree, differing_leaves
from limedb.cluster.repair import (
    AntiEntropy,
    CallNode,
    decode_tree,
    depth_for,
    encode_tree_request,
)
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.streaming import Throttle
from limedb.cluster.transitions import Transition
from limedb.cluster.verification import (
    FAILED,
    REPAIRED,
    RESULTS,
    NothingToVerify,
    Piece,
    Verification,
    VerificationStore,
    iso,
    outcome,
    pieces_for_epoch,
    transition_pieces,
)
from limedb.hlc import pack, wall_millis

log = logging.getLogger(__name__)

ROOTS_HEAD = struct.Struct("!QI")
ROOTS_RANGE = struct.Struct("!QQ")
ROOT = struct.Struct(f"!{HASH_BYTES}sI")
# Ranges per VERIFY_ROOTS call: the run is paced between calls, so a call is a short burst.
ROOTS_PER_CALL = 64
ROOTS_TIMEOUT_S = 60.0
REPAIR_TIMEOUT_S = 600.0
PUSH_TIMEOUT_S = 5.0
SETTLE_S = 1.0
REPAIR_ROUNDS = 2


class VerificationRefused(Exception):
    """A verification cannot run now (a transition runs, no ring, no such epoch)."""


class Superseded(Exception):
    """The ring moved to a newer epoch while the verification ran: its result is not
    recorded (the next transition moves those ranges again and is verified itself)."""


def encode_roots_request(cutoff: int, ranges: list[tuple[int, int]]) -> bytes:
    return ROOTS_HEAD.pack(cutoff, len(ranges)) + b"".join(
        ROOTS_RANGE.pack(s, e) for s, e in ranges
    )


def decode_roots_request(body: bytes) -> tuple[int, list[tuple[int, int]]]:
    cutoff, count = ROOTS_HEAD.unpack_from(body)
    if len(body) != ROOTS_HEAD.size + count * ROOTS_RANGE.size:
        raise rpc.RpcError(400, f"a request for {count} roots has {len(body)} bytes")
    ranges = [
        ROOTS_RANGE.unpack_from(body, ROOTS_HEAD.size + i * ROOTS_RANGE.size) for i in range(count)
    ]
    for start, end in ranges:
        if start > end:
            raise rpc.RpcError(400, f"token range {start}..{end} wraps")
    return cutoff, ranges


def decode_roots(data: bytes, count: int) -> list[tuple[bytes, int]]:
    """(root, versions) of each of `count` ranges."""
    if len(data) != count * ROOT.size:
        raise ValueError(f"a reply of {count} roots has {len(data)} bytes")
    return [ROOT.unpack_from(data, i * ROOT.size) for i in range(count)]


def leaf_pieces(tree: MerkleTree, leaves: list[int], replicas: tuple[str, ...]) -> list[Piece]:
    """The tokens of `leaves` (ascending) of `tree`, adjacent leaves merged, as pieces."""
    pieces: list[Piece] = []
    for index in leaves:
        bounds = tree.leaf_range(index)
        if bounds is None:
            continue
        lo, hi = bounds
        if pieces and pieces[-1].end + 1 == lo:
            pieces[-1] = Piece(pieces[-1].start, hi, replicas)
        else:
            pieces.append(Piece(lo, hi, replicas))
    return pieces


@dataclass
class Tally:
    """What one run has found so far."""

    started_ms: int
    checked: int = 0
    differing: int = 0
    repaired: int = 0
    still_differing: int = 0
    keys: int = 0
    unchecked: set[tuple[int, int]] = field(default_factory=set)  # (start, end) not compared
    unreachable: set[str] = field(default_factory=set)
    counts: dict[Piece, int] = field(default_factory=dict)  # versions per piece, at most
    error: str | None = None


class Verifier:
    """Verifies ranges across their replicas; serves its RPCs; keeps the newest record."""

    def __init__(
        self,
        node_id: str,
        engine,
        records: Callable[[], RingRecord | None],
        anti_entropy: AntiEntropy,
        call_node: CallNode,
        data_dir: str | Path,
        *,
        members: Callable[[], list[str]],
        settle_s: float = SETTLE_S,
        versions_per_s: float = 0,
    ) -> None:
        self.node_id = node_id
        self.engine = engine
        self.records = records
        self.anti_entropy = anti_entropy
        self.call_node = call_node
        self.members = members
        self.settle_s = settle_s
        # The pace of a run's scans, in versions hashed per second (0: unlimited).
        self.versions_per_s = versions_per_s
        self.store = VerificationStore(data_dir)
        self.last = self._load()
        self.running: str | None = None
        self.runs = dict.fromkeys(RESULTS, 0)
        self.keys_repaired_total = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def _load(self) -> Verification | None:
        try:
            return self.store.load()
        except (ValueError, OSError) as exc:
            log.warning("verification record not loaded (the next one replaces it): %s", exc)
            return None

    # ------------------------------------------------------------------ serving

    def register(self, server: rpc.RpcServer, budgeted) -> None:  # noqa: ANN001 - a wrapper
        server.register(rpc.VERIFY_ROOTS, budgeted(self.handle_roots))
        server.register(rpc.VERIFY_REPAIR, self.handle_repair)
        server.register(rpc.VERIFICATION, self.handle_record)

    async def handle_roots(self, body: bytes) -> bytes:
        cutoff, ranges = decode_roots_request(body)
        roots = await asyncio.to_thread(self._roots, ranges, cutoff)
        return b"".join(ROOT.pack(root, count) for root, count in roots)

    def _roots(self, ranges: list[tuple[int, int]], cutoff: int) -> list[tuple[bytes, int]]:
        """(root, versions) of each range here, as VERIFY_ROOTS answers."""
        trees = (
            MerkleTree.from_storage(self.engine, s, e, 0, purged_before_ts=cutoff)
            for s, e in ranges
        )
        return [(tree.root, tree.key_count) for tree in trees]

    async def handle_repair(self, body: bytes) -> bytes:
        try:
            pieces = [(int(s), int(e), tuple(map(str, p))) for s, e, p in orjson.loads(body)]
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise rpc.RpcError(400, f"bad repair request: {exc}") from exc
        run = await self.anti_entropy.repair_pieces(pieces)
        return orjson.dumps(run.to_dict())

    def handle_record(self, body: bytes) -> bytes:
        try:
            verification = Verification.from_record(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            raise rpc.RpcError(400, str(exc)) from exc
        self._adopt(verification)
        return b""

    def _adopt(self, verification: Verification) -> None:
        if not verification.newer_than(self.last):
            return
        self.last = verification
        try:
            self.store.save(verification)
        except OSError as exc:
            log.warning("verification of epoch %d not saved: %s", verification.epoch, exc)

    # ------------------------------------------------------------------ running

    def after_transition(self, t: Transition) -> None:
        """Verify finished transition `t` in the background (the driver calls this)."""
        task = asyncio.get_running_loop().create_task(self._after(t), name="verifier")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after(self, t: Transition) -> None:
        try:
            await self.run(t.new_ring.epoch, transition_pieces(t), t, "transition")
        except Superseded as exc:
            log.info("verification of transition %s abandoned: %s", t.id, exc)
        except Exception:
            log.exception("verification of transition %s failed", t.id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def verify(self, epoch: int | None = None) -> Verification:
        """On demand: the ranges transition `epoch` moved, or every range of the ring."""
        state = self.records()
        if state is None:
            raise VerificationRefused("this node has not learned the ring yet")
        if state.active is not None:
            raise VerificationRefused(
                f"ring transition {state.active.id} is running; verify after it finishes"
            )
        try:
            epoch, pieces, t = pieces_for_epoch(state.ring, state.rf, state.transition, epoch)
        except NothingToVerify as exc:
            raise VerificationRefused(str(exc)) from exc
        try:
            return await self.run(epoch, pieces, t, "on-demand")
        except Superseded as exc:
            raise VerificationRefused(str(exc)) from exc

    async def run(
        self, epoch: int, pieces: list[Piece], t: Transition | None, trigger: str
    ) -> Verification:
        async with self._lock:
            tally = Tally(wall_millis())
            self.running = f"epoch {epoch} ({trigger})"
            try:
                await self._check_and_repair(tally, epoch, pieces)
            except Superseded:
                raise  # nothing to record: those ranges are being moved again
            except Exception as exc:
                tally.error = f"{type(exc).__name__}: {exc}"
                log.exception("verification of epoch %d failed", epoch)
            finally:
                self.running = None
            verification = self._record(tally, epoch, pieces, t, trigger)
            self._adopt(verification)
        await self._publish(verification)
        return verification

    def _record(
        self, tally: Tally, epoch: int, pieces: list[Piece], t: Transition | None, trigger: str
    ) -> Verification:
        finished = wall_millis()
        result = outcome(len(tally.unchecked), tally.still_differing, tally.repaired, tally.error)
        verification = Verification(
            epoch=epoch,
            result=result,
            ranges_checked=tally.checked,
            ranges_repaired=tally.repaired,
            keys_repaired=tally.keys,
            started_at=iso(tally.started_ms),
            finished_at=iso(finished),
            finished_ms=finished,
            node=self.node_id,
            trigger=trigger,
            transition=t.id if t is not None else None,
            change=t.change.describe() if t is not None else None,
            ranges_total=len(pieces),
            ranges_differing=tally.differing,
            replicas_unreachable=tuple(sorted(tally.unreachable)),
            error=tally.error,
        )
        self.runs[result] += 1
        self.keys_repaired_total += tally.keys
        summary = (
            f"verification of epoch {epoch}: {result}, {tally.checked}/{len(pieces)} ranges "
            f"checked, {tally.repaired} repaired, {tally.keys} keys repaired"
        )
        if result == REPAIRED:
            log.warning("%s: replicas differed", summary)
        elif result == FAILED:
            unreachable = ", ".join(sorted(tally.unreachable)) or "none"
            log.warning("%s; unreachable: %s; %s", summary, unreachable, tally.error or "")
        else:
            log.info(summary)
        return verification

    async def _publish(self, verification: Verification) -> None:
        body = orjson.dumps(verification.to_record())
        others = [n for n in self.members() if n != self.node_id]
        results = await asyncio.gather(
            *(self.call_node(n, rpc.VERIFICATION, body, PUSH_TIMEOUT_S) for n in others),
            return_exceptions=True,
        )
        for node, result in zip(others, results, strict=True):
            if isinstance(result, Exception):
                log.info("verification record not pushed to %s: %s", node, result)

    def _still_current(self, epoch: int) -> None:
        state = self.records()
        now = state.ring.epoch if state is not None else None
        if now != epoch:
            raise Superseded(f"the ring moved to epoch {now} before the verification finished")

    async def _check_and_repair(self, tally: Tally, epoch: int, pieces: list[Piece]) -> None:
        self._still_current(epoch)  # a run queued behind another may start too late
        differing = await self._compare(tally, pieces)
        tally.checked = len(pieces) - len(tally.unchecked)
        tally.differing = len(differing)
        if not differing:
            return
        # Only leaves that differ twice, a settle apart, are damage: a write in flight differs
        # once (it reaches its last replica a moment later), and writes rarely hit one leaf
        # twice. Those leaves' tokens are repaired, then compared again.
        first = await self._leaves(tally, differing)
        await asyncio.sleep(self.settle_s)
        second = await self._leaves(tally, differing)
        damaged: dict[Piece, list[Piece]] = {}
        for piece in differing:
            if piece in first and piece in second:
                tree, leaves = first[piece][0], first[piece][1] & second[piece][1]
                if leaves:
                    damaged[piece] = leaf_pieces(tree, sorted(leaves), piece.replicas)
        work = [sub for subs in damaged.values() for sub in subs]
        for _ in range(REPAIR_ROUNDS):
            if not work:
                break
            self._still_current(epoch)
            await self._repair(tally, work)
            work = await self._compare(tally, work)
        self._still_current(epoch)
        left = {(p.start, p.end) for p in work} | tally.unchecked
        tally.still_differing = len(work)
        tally.repaired = sum(
            1
            for piece, subs in damaged.items()
            if (piece.start, piece.end) not in tally.unchecked
            and not any((s.start, s.end) in left for s in subs)
        )

    async def _compare(self, tally: Tally, pieces: list[Piece]) -> list[Piece]:
        """The pieces whose replicas' roots differ; those a replica did not answer for go to
        `tally.unchecked`. Keeps the largest version count of each piece in `tally.counts`."""
        by_node: dict[str, list[Piece]] = {}
        for piece in pieces:
            for node in piece.replicas:
                by_node.setdefault(node, []).append(piece)
        cutoff = self._cutoff()
        nodes = list(by_node)
        answers = await asyncio.gather(*(self._roots_of(n, by_node[n], cutoff) for n in nodes))
        roots: dict[Piece, set[bytes]] = {piece: set() for piece in pieces}
        for node, answer in zip(nodes, answers, strict=True):
            if answer is None:
                tally.unreachable.add(node)
                tally.unchecked.update((p.start, p.end) for p in by_node[node])
                continue
            for piece, (root, count) in zip(by_node[node], answer, strict=True):
                roots[piece].add(root)
                tally.counts[piece] = max(count, tally.counts.get(piece, 0))
        return [p for p in pieces if (p.start, p.end) not in tally.unchecked and len(roots[p]) > 1]

    def _cutoff(self) -> int:
        return pack(max(0, wall_millis() - self.anti_entropy.tombstone_grace_ms))

    async def _roots_of(
        self, node: str, pieces: list[Piece], cutoff: int
    ) -> list[tuple[bytes, int]] | None:
        """The roots of `pieces` at `node`, asked ROOTS_PER_CALL ranges at a time, paced to
        `versions_per_s` by the versions each answer counted."""
        ranges = [(p.start, p.end) for p in pieces]
        roots: list[tuple[bytes, int]] = []
        throttle = Throttle(self.versions_per_s)
        try:
            for first in range(0, len(ranges), ROOTS_PER_CALL):
                chunk = ranges[first : first + ROOTS_PER_CALL]
                if node == self.node_id:
                    got = await asyncio.to_thread(self._roots, chunk, cutoff)
                else:
                    body = encode_roots_request(cutoff, chunk)
                    reply = await self.call_node(node, rpc.VERIFY_ROOTS, body, ROOTS_TIMEOUT_S)
                    got = decode_roots(reply, len(chunk))
                roots.extend(got)
                await throttle.pace(sum(count for _, count in got))
        except (rpc.PeerUnavailable, rpc.RpcError, ValueError) as exc:
            log.info("verification: no roots from %s: %s", node, exc)
            return None
        return roots

    async def _leaves(
        self, tally: Tally, pieces: list[Piece]
    ) -> dict[Piece, tuple[MerkleTree, set[int]]]:
        """Per piece every replica answered for: a tree and the leaves where any two differ."""
        cutoff = self._cutoff()
        found: dict[Piece, tuple[MerkleTree, set[int]]] = {}
        throttle = Throttle(self.versions_per_s)
        for piece in pieces:
            depth = depth_for(tally.counts.get(piece, 0))
            trees = await asyncio.gather(
                *(self._tree_of(node, piece, depth, cutoff) for node in piece.replicas)
            )
            missing = [n for n, tree in zip(piece.replicas, trees, strict=True) if tree is None]
            if missing:
                tally.unreachable.update(missing)
                tally.unchecked.add((piece.start, piece.end))
                continue
            known = [tree for tree in trees if tree is not None]
            leaves = {i for other in known[1:] for i in differing_leaves(known[0], other)}
            found[piece] = (known[0], leaves)
            await throttle.pace(sum(tree.key_count for tree in known))
        return found

    async def _tree_of(self, node: str, piece: Piece, depth: int, cutoff: int):  # noqa: ANN202
        if node == self.node_id:
            return await asyncio.to_thread(
                MerkleTree.from_storage,
                self.engine,
                piece.start,
                piece.end,
                depth,
                purged_before_ts=cutoff,
            )
        body = encode_tree_request(piece.start, piece.end, depth, cutoff)
        try:
            reply = await self.call_node(node, rpc.MERKLE, body, ROOTS_TIMEOUT_S)
            return decode_tree(reply, piece.start, piece.end, depth)
        except (rpc.PeerUnavailable, rpc.RpcError, ValueError) as exc:
            log.info("verification: no tree from %s: %s", node, exc)
            return None

    async def _repair(self, tally: Tally, pieces: list[Piece]) -> None:
        """Each piece repaired by one of its replicas (this node if it is one)."""
        by_repairer: dict[str, list[tuple[int, int, list[str]]]] = {}
        for piece in pieces:
            reachable = [n for n in piece.replicas if n not in tally.unreachable]
            if not reachable:
                tally.unchecked.add((piece.start, piece.end))
                continue
            repairer = self.node_id if self.node_id in reachable else reachable[0]
            peers = [n for n in piece.replicas if n != repairer]
            by_repairer.setdefault(repairer, []).append((piece.start, piece.end, peers))
        runs = await asyncio.gather(
            *(self._repair_at(node, work) for node, work in by_repairer.items())
        )
        for node, run in zip(by_repairer, runs, strict=True):
            if run is None:
                tally.unreachable.add(node)
                continue
            tally.keys += int(run["keys_repaired"])
            tally.unreachable.update(run["peers_unreachable"])
            if run.get("error"):
                tally.error = f"repair at {node}: {run['error']}"

    async def _repair_at(self, node: str, work: list[tuple[int, int, list[str]]]) -> dict | None:
        if node == self.node_id:
            run = await self.anti_entropy.repair_pieces([(s, e, tuple(p)) for s, e, p in work])
            return run.to_dict()
        try:
            reply = await self.call_node(
                node, rpc.VERIFY_REPAIR, orjson.dumps(work), REPAIR_TIMEOUT_S
            )
        except (rpc.PeerUnavailable, rpc.RpcError) as exc:
            log.warning("verification: %s did not repair %d range(s): %s", node, len(work), exc)
            return None
        return orjson.loads(reply)

    # ------------------------------------------------------------------ reporting

    def status(self) -> dict:
        """What /admin/status, /admin/verification and the metrics show."""
        return {
            "running": self.running,
            "last": self.last.to_record() if self.last is not None else None,
            "runs": dict(self.runs),
            "keys_repaired_total": self.keys_repaired_total,
        }
