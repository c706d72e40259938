"""Anti-entropy repair: find where this node's replicas differ with Merkle trees, stream the
versions of the differing token ranges both ways.

For every token range this node replicates (one ring range, split where it wraps), the node
asks each other replica for its tree over the MERKLE RPC. A first exchange is at depth 0 (the
root and the key count only), so ranges that agree cost one tiny message; where roots differ the
trees are exchanged again at a depth fitted to the larger key count, and only the differing
leaves stream: first pulled from every peer that differs (STREAM_READ, applied here), then the
union of all differing leaves is pushed to every peer (STREAM_APPLY), so one node's repair
leaves every replica of its ranges equal. Last-writer-wins makes every applied version
idempotent, so a repair interrupted anywhere is simply run again.

The MERKLE request is `[u64 start][u64 end][u8 depth][u64 purged_before_ts]` (the requester's
cutoff, so both sides leave out the same purged tombstones); the reply is the `2**depth` leaf
hashes followed by as many `u32` counts.

Repair runs on demand (`POST /admin/repair`) and on a jittered timer; it is paced by its own
byte throttle so that it cannot crowd out client traffic, and does not run during a ring
transition (the transition's streaming is already moving those ranges).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from limedb.cluster import rpc
from limedb.cluster.background import BackgroundBudget
from limedb.cluster.keys import split_wrapping
from limedb.cluster.merkle import HASH_BYTES, MAX_DEPTH, MerkleTree, diff
from limedb.cluster.streaming import (
    APPLIED,
    RangeStreams,
    Throttle,
    decode_batch,
    encode_read,
    snapshot_floor,
)
from limedb.config import default
from limedb.hlc import pack, wall_millis
from limedb.tasks import cancel_and_wait

log = logging.getLogger(__name__)

TREE_REQUEST = struct.Struct("!QQBQ")
# A leaf should hold a few versions: finer trees cost more to send than the rows they spare.
KEYS_PER_LEAF = 16
DEPTH_LIMIT = 12
BATCH_BYTES = 256 * 1024
CALL_TIMEOUT_S = 10.0
DEFAULT_TOMBSTONE_GRACE_MS = 3 * 3600 * 1000

CallNode = Callable[[str, int, bytes, float], Awaitable[bytes]]


class RepairRefused(Exception):
    """Repair cannot run now (another repair or a ring transition is running)."""


def encode_tree_request(start: int, end: int, depth: int, purged_before_ts: int) -> bytes:
    return TREE_REQUEST.pack(start, end, depth, purged_before_ts)


def encode_tree(tree: MerkleTree) -> bytes:
    return b"".join(tree.leaves) + struct.pack(f"!{len(tree.counts)}I", *tree.counts)


def decode_tree(data: bytes, start: int, end: int, depth: int) -> MerkleTree:
    width = 1 << depth
    hashes = width * HASH_BYTES
    if len(data) != hashes + 4 * width:
        raise ValueError(f"a depth-{depth} tree reply has {len(data)} bytes")
    leaves = tuple(data[i : i + HASH_BYTES] for i in range(0, hashes, HASH_BYTES))
    counts = struct.unpack_from(f"!{width}I", data, hashes)
    return MerkleTree(start, end, depth, leaves, counts)


def depth_for(keys: int) -> int:
    """The tree depth that leaves about KEYS_PER_LEAF versions per leaf."""
    return min(DEPTH_LIMIT, MAX_DEPTH, max(0, (keys // KEYS_PER_LEAF).bit_length()))


def clip(piece: tuple[int, int], wanted: tuple[int, int] | None) -> tuple[int, int] | None:
    if wanted is None:
        return piece
    lo, hi = max(piece[0], wanted[0]), min(piece[1], wanted[1])
    return (lo, hi) if lo <= hi else None


@dataclass
class RepairRun:
    """Progress of one repair run, as /admin/status and the repair route report it."""

    started_ms: int
    token_range: tuple[int, int] | None
    ranges_total: int = 0
    ranges_compared: int = 0
    ranges_differing: int = 0
    leaves_differing: int = 0
    keys_pulled: int = 0
    keys_pushed: int = 0
    bytes_streamed: int = 0
    peers_unreachable: list[str] = field(default_factory=list)
    finished_ms: int | None = None
    error: str | None = None

    @property
    def keys_repaired(self) -> int:
        return self.keys_pulled + self.keys_pushed

    def to_dict(self) -> dict:
        return {
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "range": list(self.token_range) if self.token_range else None,
            "ranges_total": self.ranges_total,
            "ranges_compared": self.ranges_compared,
            "ranges_differing": self.ranges_differing,
            "leaves_differing": self.leaves_differing,
            "keys_repaired": self.keys_repaired,
            "keys_pulled": self.keys_pulled,
            "keys_pushed": self.keys_pushed,
            "bytes_streamed": self.bytes_streamed,
            "peers_unreachable": sorted(set(self.peers_unreachable)),
            "error": self.error,
        }


class AntiEntropy:
    """Serves MERKLE requests and runs repairs of this node's ranges, on demand and on a timer.

    `replica_ranges()` gives the current ring's ranges this node replicates with their replica
    sets, or None while a transition runs (repair waits for it to finish).
    """

    def __init__(
        self,
        node_id: str,
        engine,
        streams: RangeStreams,
        call_node: CallNode,
        replica_ranges: Callable[[], list[tuple[int, int, tuple[str, ...]]] | None],
        *,
        interval_s: float = default("repair_interval_s"),
        bytes_per_s: float = 8 << 20,
        tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS,
        budget: BackgroundBudget | None = None,
    ) -> None:
        self.node_id = node_id
        self.engine = engine
        self.streams = streams
        self.call_node = call_node
        self.replica_ranges = replica_ranges
        self.interval_s = interval_s
        self.bytes_per_s = bytes_per_s
        self.tombstone_grace_ms = tombstone_grace_ms
        self.budget = budget or BackgroundBudget()
        self.current: RepairRun | None = None
        # The last run (a verification: replicas compared, whatever it found) and the last
        # one that found differences and repaired them.
        self.last: RepairRun | None = None
        self.last_repaired: RepairRun | None = None
        self.runs = 0
        self.failed_runs = 0
        self.ranges_differing_total = 0
        self.keys_repaired_total = 0
        self.trees_served = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task | None = None

    # ------------------------------------------------------------------ serving trees

    async def handle_tree(self, body: bytes) -> bytes:
        start, end, depth, purged_before_ts = TREE_REQUEST.unpack(body)
        if not 0 <= depth <= DEPTH_LIMIT:
            raise rpc.RpcError(400, f"depth {depth} outside 0..{DEPTH_LIMIT}")
        tree = await self._tree(start, end, depth, purged_before_ts)
        self.trees_served += 1
        return encode_tree(tree)

    async def _tree(self, start: int, end: int, depth: int, purged_before_ts: int) -> MerkleTree:
        # A range scan: in a thread, so the event loop keeps serving clients meanwhile.
        return await asyncio.to_thread(
            MerkleTree.from_storage,
            self.engine,
            start,
            end,
            depth,
            purged_before_ts=purged_before_ts,
        )

    def register(self, server: rpc.RpcServer) -> None:
        server.register(rpc.MERKLE, self.handle_tree)

    # ------------------------------------------------------------------ running a repair

    async def repair(self, token_range: tuple[int, int] | None = None) -> dict:
        """Repair every range this node replicates (within `token_range`, inclusive, if
        given); returns the run's summary. Raises RepairRefused while another runs."""
        if self._lock.locked():
            raise RepairRefused("a repair is already running on this node")
        async with self._lock:
            ranges = self.replica_ranges()
            if ranges is None:
                raise RepairRefused("a ring transition is running; repair after it finishes")
            run = self.current = RepairRun(wall_millis(), token_range)
            try:
                await self._run(run, ranges)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                log.exception("repair failed")
            finally:
                run.finished_ms = wall_millis()
                self.current = None
                self._finished(run)
            return run.to_dict()

    async def repair_pieces(self, pieces: list[tuple[int, int, tuple[str, ...]]]) -> RepairRun:
        """Repair the given token ranges (inclusive, not wrapping) between this node and the
        given peers, whatever the ring says (the verifier names the replicas it compared).
        Waits for a repair already running here instead of refusing."""
        async with self._lock:
            run = self.current = RepairRun(wall_millis(), None)
            try:
                await self._run_pieces(run, [(s, e, tuple(p)) for s, e, p in pieces])
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                log.exception("repair of %d range(s) failed", len(pieces))
            finally:
                run.finished_ms = wall_millis()
                self.current = None
                self._finished(run)
            return run

    def _finished(self, run: RepairRun) -> None:
        self.last = run
        self.runs += 1
        self.failed_runs += run.error is not None
        self.ranges_differing_total += run.ranges_differing
        self.keys_repaired_total += run.keys_repaired
        if run.keys_repaired or run.ranges_differing:
            self.last_repaired = run

    async def _run(self, run: RepairRun, ranges: list[tuple[int, int, tuple[str, ...]]]) -> None:
        pieces: list[tuple[int, int, tuple[str, ...]]] = []
        for start, end, replicas in ranges:
            for piece in split_wrapping(start, end):
                clipped = clip(piece, run.token_range)
                if clipped is not None:
                    pieces.append((*clipped, tuple(n for n in replicas if n != self.node_id)))
        await self._run_pieces(run, pieces)

    async def _run_pieces(
        self, run: RepairRun, pieces: list[tuple[int, int, tuple[str, ...]]]
    ) -> None:
        run.ranges_total = len(pieces)
        purged_before_ts = pack(max(0, run.started_ms - self.tombstone_grace_ms))
        throttle = Throttle(self.bytes_per_s)
        for start, end, peers in pieces:
            await self._repair_range(run, start, end, peers, purged_before_ts, throttle)
            run.ranges_compared += 1

    async def _peer_tree(
        self, run: RepairRun, peer: str, start: int, end: int, depth: int, cutoff: int
    ) -> MerkleTree | None:
        body = encode_tree_request(start, end, depth, cutoff)
        try:
            reply = await self.call_node(peer, rpc.MERKLE, body, CALL_TIMEOUT_S)
        except (rpc.PeerUnavailable, rpc.RpcError) as exc:
            log.info("repair: no tree of %d..%d from %s: %s", start, end, peer, exc)
            run.peers_unreachable.append(peer)
            return None
        return decode_tree(reply, start, end, depth)

    async def _repair_range(
        self,
        run: RepairRun,
        start: int,
        end: int,
        peers: tuple[str, ...],
        cutoff: int,
        throttle: Throttle,
    ) -> None:
        if not peers:
            return
        mine = await self._tree(start, end, 0, cutoff)
        roots = await asyncio.gather(
            *(self._peer_tree(run, p, start, end, 0, cutoff) for p in peers)
        )
        differing = [
            (peer, tree)
            for peer, tree in zip(peers, roots, strict=True)
            if tree is not None and tree.root != mine.root
        ]
        agreed = [
            peer
            for peer, tree in zip(peers, roots, strict=True)
            if tree is not None and tree.root == mine.root
        ]
        if not differing:
            return
        run.ranges_differing += 1
        depth = depth_for(max(mine.key_count, *(t.key_count for _, t in differing)))
        if depth:
            mine = await self._tree(start, end, depth, cutoff)
        pulls: dict[str, list[tuple[int, int]]] = {}
        for peer, _ in differing:
            tree = await self._peer_tree(run, peer, start, end, depth, cutoff)
            if tree is not None:
                pulls[peer] = diff(mine, tree)
        union = _union(r for ranges in pulls.values() for r in ranges)
        run.leaves_differing += sum(mine.leaf_of(hi) - mine.leaf_of(lo) + 1 for lo, hi in union)
        reached = []
        pulled_before = run.keys_pulled
        for peer, ranges in pulls.items():
            try:
                for lo, hi in ranges:
                    await self._pull(run, peer, lo, hi, throttle)
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                # This peer's range is left for the next run; the others are still repaired.
                log.info("repair: pulling %d..%d from %s failed: %s", start, end, peer, exc)
                run.peers_unreachable.append(peer)
                continue
            reached.append(peer)
        # Pushed from a snapshot taken after the pulls, so what one peer had reaches the others:
        # also a peer that agreed with this node before, when this node pulled something new.
        if run.keys_pulled > pulled_before:
            reached.extend(agreed)
        floor = snapshot_floor()
        for peer in reached:
            try:
                for lo, hi in union:
                    await self._push(run, peer, lo, hi, floor, throttle)
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                log.info("repair: pushing %d..%d to %s failed: %s", start, end, peer, exc)
                run.peers_unreachable.append(peer)

    async def _pull(self, run: RepairRun, peer: str, lo: int, hi: int, throttle: Throttle) -> None:
        cursor, floor = lo, snapshot_floor()
        while True:
            body = encode_read(cursor, hi, BATCH_BYTES, floor)
            batch = decode_batch(await self.call_node(peer, rpc.STREAM_READ, body, CALL_TIMEOUT_S))
            if batch.count:
                run.keys_pulled += await self.budget.run(partial(self.streams.apply, batch.entries))
                run.bytes_streamed += batch.nbytes
                await throttle.pace(batch.nbytes)
            if batch.done:
                return
            cursor = batch.next_cursor

    async def _push(
        self, run: RepairRun, peer: str, lo: int, hi: int, floor: float, throttle: Throttle
    ) -> None:
        cursor = lo
        while True:
            read = partial(self.streams.read, cursor, hi, BATCH_BYTES, floor)
            batch = await self.budget.run(read)
            if batch.count:
                reply = await self.call_node(peer, rpc.STREAM_APPLY, batch.entries, CALL_TIMEOUT_S)
                run.keys_pushed += APPLIED.unpack(reply)[0]
                run.bytes_streamed += batch.nbytes
                await throttle.pace(batch.nbytes)
            if batch.done:
                return
            cursor = batch.next_cursor

    # ------------------------------------------------------------------ the timer

    def start(self) -> None:
        if self.interval_s > 0 and self._timer is None:
            self._timer = asyncio.create_task(self._every_interval(), name="anti-entropy")

    async def stop(self) -> None:
        timer, self._timer = self._timer, None
        await cancel_and_wait(timer)

    async def _every_interval(self) -> None:
        # Jittered (0.5x to 1.5x) so that nodes started together do not repair together.
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(0.5, 1.5))
            try:
                await self.repair()
            except RepairRefused as exc:
                log.info("scheduled repair skipped: %s", exc)
            except Exception:
                log.exception("scheduled repair failed")

    def status(self) -> dict:
        return {
            "running": self.current is not None,
            "runs": self.runs,
            "interval_s": self.interval_s,
            "trees_served": self.trees_served,
            "current": self.current.to_dict() if self.current is not None else None,
            "last": self.last.to_dict() if self.last is not None else None,
            "last_repaired": (
                self.last_repaired.to_dict() if self.last_repaired is not None else None
            ),
            "failed_runs": self.failed_runs,
            "ranges_differing_total": self.ranges_differing_total,
            "keys_repaired_total": self.keys_repaired_total,
        }


def _union(ranges) -> list[tuple[int, int]]:  # noqa: ANN001 - any iterable of (lo, hi)
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
