"""The KeyValueService of a node with peers: membership, gossip, RPC, replica, hints, coordinator.

`ClusterService.open(config, engine)` builds every piece of a clustered node around the engine
the server opened; `start()` listens on the internal port, begins gossiping and replaying
hints, `stop()` undoes it in reverse. The public API sees only the KeyValueService methods and
`cluster_view()`; everything node-to-node goes over `limedb.cluster.rpc` on the internal port.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from limedb.cluster import rejoin, rpc
from limedb.cluster.atomic import ClusterAtomic, OperationDecoder, ReadModifyWrite
from limedb.cluster.background import BackgroundBudget
from limedb.cluster.backup.agent import Backups
from limedb.cluster.clock_offset import ClockOffsets
from limedb.cluster.coordinator import Coordinator, required_acks
from limedb.cluster.failure import Liveness
from limedb.cluster.gossip import GossipError
from limedb.cluster.handed_off import HandedOff
from limedb.cluster.heard import HeardStore
from limedb.cluster.hints import HintStore
from limedb.cluster.keys import token_of
from limedb.cluster.local import LocalService
from limedb.cluster.membership import (
    GossipLoop,
    LivenessChange,
    Membership,
    MembershipSnapshot,
)
from limedb.cluster.proposals import Proposal
from limedb.cluster.repair import AntiEntropy
from limedb.cluster.replace_pending import PendingReplace
from limedb.cluster.replica import Mutation, Replica
from limedb.cluster.ring.exchange import RecordGossip
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.ring.store import RingStore
from limedb.cluster.service import (
    Consistency,
    ReadResult,
    ReplicaHolding,
    ReplicaReport,
    Unavailable,
)
from limedb.cluster.status import announced, member_states, ring_status
from limedb.cluster.streaming import RangeStreams
from limedb.cluster.table_streams import TableStreams
from limedb.cluster.transaction import ClusterTransactions, Step, StepResult, Watch
from limedb.cluster.transition_driver import DriverSettings, TransitionDriver
from limedb.cluster.transitions import Change
from limedb.cluster.verifier import Verifier
from limedb.cluster.view import ClusterView, MemberView
from limedb.config import Config
from limedb.hlc import HLC, millis_of, wall_millis
from limedb.tls import TlsMaterial

log = logging.getLogger(__name__)

INTERNAL_PORT_OFFSET = 1000
HINT_SWEEP_S = 5.0
_GOSSIP_STATUS = {Liveness.ALIVE: "active", Liveness.SUSPECT: "stale", Liveness.DEAD: "dead"}


KEYS_PAGE = 10_000
KEYS_READ_BATCH = 256
_U32 = struct.Struct("!I")


def encode_keys_request(after: bytes | None, limit: int) -> bytes:
    if after is None:
        return _U32.pack(limit)
    return _U32.pack(limit) + b"\x01" + after


def decode_keys_request(body: bytes) -> tuple[bytes | None, int]:
    (limit,) = _U32.unpack_from(body)
    rest = body[_U32.size :]
    return (rest[1:] if rest else None), limit


def encode_keys(keys: list[bytes]) -> bytes:
    return b"".join(_U32.pack(len(k)) + k for k in keys)


def decode_keys(body: bytes) -> list[bytes]:
    keys = []
    offset = 0
    while offset < len(body):
        (length,) = _U32.unpack_from(body, offset)
        offset += _U32.size
        keys.append(body[offset : offset + length])
        offset += length
    return keys


def heartbeat_lag(silence_s: float, interval_s: float, own_heartbeat: int) -> int:
    """How many heartbeats of a peer this node has missed (the original LimeDB's integer
    lag): 0 for a peer heard within the last gossip interval. A peer never heard from has
    missed every heartbeat of this node's life."""
    if silence_s == float("inf"):
        return own_heartbeat
    return int(silence_s // interval_s) if interval_s > 0 else 0


def member_view(entry: dict, snapshot: MembershipSnapshot) -> MemberView:
    """One member of the ring record (limedb.cluster.status.member_states) as the views show it."""
    node_id = entry["node_id"]
    if node_id == snapshot.node_id:
        return MemberView(node_id, entry["url"], entry["state"], "active", snapshot.heartbeat)
    peer = snapshot.peer(node_id)
    if peer is None:
        return MemberView(node_id, entry["url"], entry["state"], "dead", 0, snapshot.heartbeat)
    lag = heartbeat_lag(peer.silence_s, snapshot.gossip_interval_s, snapshot.heartbeat)
    return MemberView(
        node_id,
        peer.url,
        entry["state"],
        _GOSSIP_STATUS[peer.liveness],
        peer.version,
        lag,
    )


def outsiders(snapshot: MembershipSnapshot, known: set[str]) -> tuple[MemberView, ...]:
    """Peers heard through gossip that the ring record does not name (e.g. a node started
    to be joined, before its join): listed by /api/v1/cluster/gossip while they are not dead,
    unless they announce that they left."""
    views = []
    for peer in snapshot.peers:
        if peer.node_id in known or peer.status == "left" or peer.liveness is Liveness.DEAD:
            continue
        lag = heartbeat_lag(peer.silence_s, snapshot.gossip_interval_s, snapshot.heartbeat)
        status = _GOSSIP_STATUS[peer.liveness]
        views.append(MemberView(peer.node_id, peer.url, "None", status, peer.version, lag))
    return tuple(views)


def default_internal_port(url: str) -> int:
    """Where a peer's internal RPC listens unless gossip says otherwise: public port + 1000."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return port + INTERNAL_PORT_OFFSET


@functools.lru_cache(maxsize=1024)
def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def static_ring(config: Config) -> Ring:
    """The initial ring of a fresh cluster: this node plus every seed, seeds identified by
    URL (LimeDB's model; a node with another id announces itself through gossip)."""
    members = {url: url for url in config.seeds if url != config.advertise_url}
    members[config.node_id] = config.advertise_url
    return Ring(members, config.vnodes)


def initial_ring_record(config: Config, store: RingStore) -> RingRecord | None:
    """The persisted ring record; else none for a node started to be joined (it learns the
    ring from its seeds); else the static ring of a fresh cluster."""
    state = store.load()
    if state is not None:
        return state
    if config.await_join:
        return None
    return RingRecord(static_ring(config), config.replication_factor)


class ClusterService:
    """A clustered node: any key, any node; replicated with quorums."""

    # Its key-value coroutines (get, put, delete: the coordinator's) await only futures; the
    # RPC connect that may need a task runs in one of its own (rpc.PeerConnection.request).
    inline_safe = True

    def __init__(
        self,
        config: Config,
        engine,
        hints_engine,
        *,
        internal_port: int,
        operations: OperationDecoder,
        tls: TlsMaterial | None = None,
        fresh_data_dir: bool = False,
    ) -> None:
        self.config = config
        self.node_id: str = config.node_id
        self.node_url: str = config.advertise_url
        self.engine = engine
        self.hints_engine = hints_engine
        self.internal_port = internal_port
        # One clock per process: the engine's observes every stored timestamp (also at
        # recovery), so versions stamped here always order after what this node holds.
        self.hlc: HLC = engine.hlc
        self.hlc.max_offset_ms = config.max_clock_offset_ms
        host = urlsplit(self.node_url).hostname or "127.0.0.1"
        self.ring_store = RingStore(config.data_dir)
        # A data dir a clustered node used before holds hints/ (and ring.json after the first
        # transition): only one without both may be a member whose data is gone.
        self._used_before = not fresh_data_dir or self.ring_store.path.exists()
        state = initial_ring_record(config, self.ring_store)
        # Who this node heard, kept across its restarts (REJOIN's answer, limedb.cluster.heard).
        self.heard = HeardStore(config.data_dir)
        # A self-replace decided and not yet committed (limedb.cluster.replace_pending).
        self.pending_replace = PendingReplace(config.data_dir)
        self._replace_earlier: frozenset[str] = frozenset()
        self.membership = Membership(
            self.node_id,
            self.node_url,
            state.ring if state is not None else None,
            seeds=config.seeds,
            internal_addr=f"{host}:{internal_port}",
            **self.heard.membership_hooks(),
        )
        self.keeper = RingKeeper(self.membership, self.ring_store, state)
        self.membership.gossip = RecordGossip.replacing(self.membership.gossip, self.keeper)
        self.client = rpc.RpcClient(config.cluster_secret, tls)
        self.server = rpc.RpcServer(config.cluster_secret, tls)
        self.clock = ClockOffsets(
            config.max_clock_offset_ms,
            self._other_members,
            lambda node_id, timeout_s: self.call_node(node_id, rpc.PING, b"", timeout_s),
            peer_name=self._peer_name,
            stamped=lambda: self.hlc.last,
        )
        self.replica = Replica(engine, self.hlc, self.clock)
        self._split_addrs: dict[str, tuple[str, int]] = {}
        self.local = LocalService(
            engine,
            node_id=self.node_id,
            node_url=self.node_url,
            vnodes=config.vnodes,
            clock=self.hlc,
        )
        self.hints = HintStore(
            hints_engine,
            self._deliver_hint,
            window_ms=config.hint_window_ms,
        )
        self.coordinator = Coordinator(
            node_id=self.node_id,
            membership=self.membership,
            replica=self.replica,
            client=self.client,
            address_of=self.address_of,
            hints=self.hints,
            hlc=self.hlc,
            replication_factor=config.replication_factor,
            read_consistency=Consistency(config.read_consistency),
            write_consistency=Consistency(config.write_consistency),
            timeout_s=config.request_timeout_ms / 1000,
            clock=self.clock,
        )
        self.atomic = ClusterAtomic(self.coordinator, self.coordinator.call, Mutation, operations)
        self.transactions = ClusterTransactions(self.atomic)
        self.coordinator.routing = self.keeper
        self.handed_off = HandedOff(config.data_dir)
        self.streams = RangeStreams(
            engine, self.hlc, self.handed_off, self.clock, config.purge_mb_per_s * 1e6
        )
        self.streams.tables = TableStreams(
            engine, config.data_dir, self.hlc, self.clock, self.call_node
        )
        self.driver = TransitionDriver(
            self.node_id,
            self.keeper,
            self.membership,
            self.streams,
            self.call_node,
            DriverSettings.from_config(config),
            self.coordinator.inflight,
        )
        # Streaming, repair and hint replay yield to client requests (the API sets `pressure`).
        self.background = BackgroundBudget()
        self.anti_entropy = AntiEntropy(
            self.node_id,
            engine,
            self.streams,
            self.call_node,
            self._replica_ranges,
            interval_s=config.repair_interval_s,
            bytes_per_s=config.repair_mb_per_s * (1 << 20),
            budget=self.background,
        )
        self.verifier = Verifier(
            self.node_id,
            engine,
            lambda: self.keeper.state,
            self.anti_entropy,
            self.call_node,
            config.data_dir,
            members=self._record_members,
            versions_per_s=config.verify_versions_per_s,
        )
        self.driver.on_done = self.verifier.after_transition
        self.backups = Backups(
            node_id=self.node_id,
            node_url=self.node_url,
            engine=engine,
            data_dir=config.data_dir,
            ring_record=self.ring_record,
            call=self.call_node,
            apply=self.streams.apply,
            local_count=self.local_count,
            budget=self.background,
            mb_per_s=config.stream_mb_per_s,
        )
        self.gossip_loop = GossipLoop(self.membership, self._send_gossip)
        self.membership.add_listener(self._on_liveness)
        self._sweeper: asyncio.Task | None = None
        self._replacing: asyncio.Task | None = None
        self.start_mode = rejoin.StartMode.RESUME
        self._ready = False
        self._stopping = False
        self._view_cache: tuple[Ring, tuple[tuple[int, str], ...]] | None = None

    @classmethod
    def open(
        cls,
        config: Config,
        engine,
        operations: OperationDecoder,
        tls: TlsMaterial | None = None,
    ) -> ClusterService:
        """Open the hint store next to the data and build the service (not yet started);
        `operations` rebuilds the atomic operations peers forward (limedb.cluster.atomic);
        `tls` makes the internal RPC mutual TLS."""
        from limedb.storage import Engine, EngineOptions

        hints_dir = Path(config.data_dir) / "hints"
        fresh_data_dir = not hints_dir.exists()
        os.makedirs(hints_dir, exist_ok=True)
        hints_engine = Engine.open(hints_dir, EngineOptions(durability=config.durability))
        internal_port = config.internal_port or default_internal_port(config.advertise_url)
        try:
            return cls(
                config,
                engine,
                hints_engine,
                internal_port=internal_port,
                operations=operations,
                tls=tls,
                fresh_data_dir=fresh_data_dir,
            )
        except BaseException:
            hints_engine.close()  # its lock too: the node may try again (limedb.server)
            raise

    # ------------------------------------------------------------------ addressing

    def address_of(self, node_id: str) -> tuple[str, int]:
        # Membership.internal_addr_of, inline: asked for every peer replica of an operation.
        state = self.membership.gossip.states.get(node_id)
        addr = state.internal_addr if state is not None else ""
        if addr:
            # Asked for every replica of every operation: each address is parsed once.
            split = self._split_addrs.get(addr)
            if split is None:
                if len(self._split_addrs) >= 1024:
                    self._split_addrs.clear()
                split = self._split_addrs[addr] = split_addr(addr)
            return split
        url = self.membership.url_of(node_id) or node_id
        return urlsplit(url).hostname or "127.0.0.1", default_internal_port(url)

    def _address_of_url(self, url: str) -> tuple[str, int]:
        for node_id, state in self.membership.gossip.states.items():
            if state.advertise_url == url:
                return self.address_of(node_id)
        ring = self.membership.ring
        node_id = ring.node_id_of_url(url) if ring is not None else None
        if node_id is not None:
            return self.address_of(node_id)
        return urlsplit(url).hostname or "127.0.0.1", default_internal_port(url)

    def _record_members(self) -> list[str]:
        state = self.keeper.state
        return list(state.all_members()) if state is not None else []

    def _other_members(self) -> list[str]:
        ring = self.membership.ring
        return [n for n in ring.members if n != self.node_id] if ring is not None else []

    def _peer_name(self, address: str) -> str:
        """The member(s) at an RPC peer's address, for the log (the port is ephemeral)."""
        host = split_addr(address)[0]
        ring = self.membership.ring
        names = [
            n for n in (ring.members if ring is not None else ()) if self.address_of(n)[0] == host
        ]
        return f"{'/'.join(names)} ({address})" if names else address

    async def call_node(self, node_id: str, kind: int, payload: bytes, timeout_s: float) -> bytes:
        host, port = self.address_of(node_id)
        return await self.client.call(host, port, kind, payload, timeout_s)

    async def _send_gossip(self, url: str, message: dict) -> dict:
        host, port = self._address_of_url(url)
        timeout_s = self.membership.gossip_interval_s
        reply = await self.client.call(host, port, rpc.GOSSIP, orjson.dumps(message), timeout_s)
        return orjson.loads(reply)

    def _handle_gossip(self, body: bytes) -> bytes:
        try:
            return orjson.dumps(self.membership.handle(orjson.loads(body)))
        except (GossipError, orjson.JSONDecodeError) as exc:
            raise rpc.RpcError(400, str(exc)) from exc

    # ------------------------------------------------------------------ hints

    async def _deliver_hint(self, node_id: str, mutation: Mutation) -> None:
        await self.background.yield_to_clients()
        await self.coordinator.deliver_hint(node_id, mutation)

    def _on_liveness(self, change: LivenessChange) -> None:
        if change.new is Liveness.ALIVE:
            self.hints.replay_soon(change.node_id)

    async def _sweep_hints(self) -> None:
        """Replay hints for live targets the listener may have missed (e.g. hints written
        before this process restarted) and drop expired ones."""
        while True:
            await asyncio.sleep(HINT_SWEEP_S)
            try:
                for target in self.hints.targets():
                    if self.membership.is_alive(target):
                        self.hints.replay_soon(target)
                await self.hints.expire()
            except Exception:
                log.exception("hint sweep failed")

    # ------------------------------------------------------------------ automatic replacement

    def _handle_rejoin(self, body: bytes) -> bytes:
        """REJOIN: this node's ring record and whether it heard the asking node in an earlier
        run (limedb.cluster.rejoin)."""
        try:
            node_id, generation = rejoin.decode_question(body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise rpc.RpcError(400, f"bad REJOIN question: {exc}") from exc
        first = self.membership.first_generation(node_id)
        return rejoin.SeedAnswer(
            self.keeper.state, rejoin.heard_before(first, generation)
        ).to_wire()

    async def _ask_seed(self, url: str, question: bytes) -> rejoin.SeedAnswer | bool:
        """The seed's answer; else True if it was reached but gave none (it refused: another
        cluster's secret, a version without REJOIN; a certificate this node does not trust; a
        malformed answer), False if it could not be reached (not up yet)."""
        host, port = self._address_of_url(url)
        try:
            return rejoin.SeedAnswer.from_wire(
                await self.client.call(host, port, rpc.REJOIN, question, 2.0)
            )
        except rpc.PeerUnavailable as exc:
            log.info("seed %s did not answer REJOIN: %s", url, exc)
            return isinstance(exc.__cause__, ssl.SSLCertVerificationError)
        except (rpc.RpcError, ValueError, KeyError, TypeError) as exc:
            log.info("seed %s refused REJOIN: %s", url, exc)
            return True

    async def _ask_seeds(self, seeds: list[str], question: bytes) -> list[rejoin.SeedAnswer]:
        """Every seed's REJOIN answer, asked again each second while no seed could be reached,
        for up to `rejoin_wait_ms`: seeds restarting with this node (a whole cluster back at
        once) listen only once their own storage has opened. A seed that was reached and
        refused ends the wait: asking again would not change its answer."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.config.rejoin_wait_ms / 1000
        waited = False
        while True:
            replies = await asyncio.gather(*(self._ask_seed(u, question) for u in seeds))
            answers = [a for a in replies if isinstance(a, rejoin.SeedAnswer)]
            if answers or any(a is True for a in replies) or not seeds or clock() >= deadline:
                return answers
            if not waited:
                waited = True
                log.warning(
                    "node %s: its data dir is empty and no seed could be reached for REJOIN "
                    "yet; asking again each second for up to %.0f s",
                    self.node_id,
                    self.config.rejoin_wait_ms / 1000,
                )
            await asyncio.sleep(min(1.0, max(0.0, deadline - clock())))

    async def _decide_start(self) -> None:
        earlier = self.pending_replace.load()
        has_data = bool(self.local.local_items(None, 1))
        if earlier is not None or self._used_before or has_data or not self.config.auto_replace:
            self.start_mode = rejoin.decide(
                self.node_id,
                has_local_record=self._used_before,
                has_local_data=has_data,
                answers=(),
                auto_replace=self.config.auto_replace,
                replace_pending=earlier is not None,
            )
            if earlier is not None:
                self._replace_earlier = earlier
                self.replica.serves_reads = False
                log.warning(
                    "node %s: an earlier run found its data dir empty and asked to be "
                    "replaced; that replace has not committed yet: it still refuses replica "
                    "reads and waits for it (limedb.cluster.replace_pending)",
                    self.node_id,
                )
            return
        question = rejoin.encode_question(self.node_id, self.membership.gossip.own.generation)
        seeds = [u for u in self.config.seeds if u.rstrip("/") != self.node_url.rstrip("/")]
        answers = await self._ask_seeds(seeds, question)
        self.start_mode = rejoin.decide(
            self.node_id, has_local_record=False, has_local_data=False, answers=answers
        )
        record = rejoin.newest_record(answers)
        if self.start_mode is not rejoin.StartMode.REPLACE:
            if seeds and not answers:
                log.warning(
                    "node %s: its data dir is empty and no seed answered REJOIN (none could "
                    "be reached in time, or each refused); it starts as a new node, not as a "
                    "member to replace",
                    self.node_id,
                )
            elif record is not None and self.node_id in record.ring.members:
                log.warning(
                    "node %s: the ring lists this node and its data dir is empty, but %d of %d "
                    "seeds answered and none heard it before this run; it starts as before, "
                    "not replaced (limedb.cluster.rejoin)",
                    self.node_id,
                    len(answers),
                    len(seeds),
                )
            return
        assert record is not None
        # Written before the record is adopted (ring.json): from then on a restart would look
        # like a node that used its data dir before.
        state = self.keeper.state
        self._replace_earlier = frozenset(
            t.id for t in (state.transition if state else None, record.transition) if t
        )
        self.pending_replace.save(self._replace_earlier)
        self.keeper.adopt(record)
        self.replica.serves_reads = False
        log.warning(
            "node %s: the ring lists this node but its data dir is empty; it refuses replica "
            "reads and asks the survivors to replace it (auto_replace)",
            self.node_id,
        )

    async def _replace_self(self) -> None:
        """Propose `replace <me> by <me>` until such a replace has committed; then serve reads."""
        earlier = self._replace_earlier
        change = Change.replace(self.node_id, self.node_id, self.node_url)
        while not rejoin.replaced(self.keeper.state, self.node_id, earlier):
            if rejoin.no_longer_a_member(self.keeper.state, self.node_id):
                log.warning("node %s: removed from the ring; no replace to wait for", self.node_id)
                break
            if rejoin.needs_proposal(self.keeper.state):
                try:
                    outcome = await self.propose(change)
                    if not outcome.accepted:
                        log.info("auto-replace not started yet: %s", outcome.error)
                except Exception as exc:  # retried: the proposer may be unreachable a while
                    log.info("auto-replace proposal failed: %s", exc)
            await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(self.pending_replace.clear)
        except OSError as exc:  # the next start replaces it again: more work, nothing lost
            log.warning("could not remove %s: %s", self.pending_replace.path, exc)
        self.replica.serves_reads = True
        log.info("node %s: replaced; it serves reads again", self.node_id)

    # ------------------------------------------------------------------ repair

    def _replica_ranges(self) -> list[tuple[int, int, tuple[str, ...]]] | None:
        """The committed ring's ranges this node replicates, with their replica sets; None
        while a transition runs (its streaming is moving those ranges)."""
        state = self.keeper.state
        if state is None or state.active is not None:
            return None
        ring, rf = state.ring, state.rf
        return [
            (r.start, r.end, ring.replicas(r.end, rf))
            for r in ring.replica_ranges(self.node_id, rf)
        ]

    # ------------------------------------------------------------------ AdminService

    def ring_record(self) -> RingRecord | None:
        return self.keeper.state

    async def propose(self, change: Change) -> Proposal:
        return await self.driver.proposals.submit(change)

    def admin_status(self) -> dict:
        driver = self.driver
        ring = ring_status(
            self.keeper.state, self.node_id, driver.liveness, driver.transition_status
        )
        return {
            **ring,
            **announced(),
            "repair": self.anti_entropy.status(),
            "verification": self.verifier.status(),
            # Hints this node holds, by target: a rolling upgrade waits for the ones to a
            # restarted node to drain before it restarts the next (docs/kubernetes.md).
            "hints_pending": dict(self.hints.stats()["pending_by_target"]),
        }

    async def repair(self, token_range: tuple[int, int] | None = None) -> dict:
        """Anti-entropy repair of this node's ranges now (POST /admin/repair)."""
        self._check_open()
        return await self.anti_entropy.repair(token_range)

    async def verify(self, epoch: int | None = None) -> dict:
        """Verify the ranges transition `epoch` moved (every range: None) now."""
        self._check_open()
        return (await self.verifier.verify(epoch)).to_record()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.replica.register(self.server)
        self.server.register(rpc.GOSSIP, self._handle_gossip)
        self.driver.register(self.server)  # RING_RECORD and PROPOSE
        self.streams.register(self.server)
        self.anti_entropy.register(self.server)
        # Bulk requests from peers (their streams and repairs) are served within the budget.
        budget = self.background
        self.server.register(rpc.STREAM_READ, budget.wrap(self.streams.handle_read))
        self.server.register(rpc.STREAM_APPLY, budget.wrap(self.streams.handle_apply))
        tables = self.streams.tables
        self.server.register(rpc.TABLE_CUT, budget.wrap(tables.handle_cut))
        self.server.register(rpc.TABLE_READ, budget.wrap(tables.handle_read))
        self.server.register(rpc.TABLE_WRITE, budget.wrap(tables.handle_write))
        self.server.register(rpc.TABLE_INGEST, budget.wrap(tables.handle_ingest))
        self.server.register(rpc.TABLE_DROP, tables.handle_drop)
        # A fetch mostly waits on the source's TABLE_READs (served within its budget); only
        # its ingest takes a slot here.
        tables.run_bulk = budget.run
        self.server.register(rpc.TABLE_FETCH, tables.handle_fetch)
        self.server.register(rpc.TABLE_FETCH_SHARED, tables.handle_fetch_shared)
        self.server.register(rpc.MERKLE, budget.wrap(self.anti_entropy.handle_tree))
        self.verifier.register(self.server, budget.wrap)
        self.atomic.register(self.server)
        self.transactions.register(self.server)
        self.server.register(rpc.LOCAL_KEYS, self._handle_local_keys)
        self.server.register(rpc.BACKUP, self.backups.handle_rpc)
        self.server.register(rpc.REJOIN, self._handle_rejoin)
        self.clock.register(self.server)  # PING replies carry this node's clock
        bind = self.config.host
        await self.server.start(bind, self.internal_port)
        await self.local.start()
        # Before this node gossips: is it a listed member back on an empty disk?
        await self._decide_start()
        await self.gossip_loop.start()
        self.clock.start()
        self._sweeper = asyncio.create_task(self._sweep_hints(), name="hint-sweeper")
        state = self.keeper.state
        if state is not None:
            await self.driver.records.pull_from(list(state.all_members()))
        await self.driver.start()
        self.anti_entropy.start()
        if self.start_mode is rejoin.StartMode.REPLACE:
            self._replacing = asyncio.create_task(self._replace_self(), name="auto-replace")
        self._ready = True
        log.info(
            "cluster node %s: internal RPC on %s:%d, %d ring members",
            self.node_id,
            bind,
            self.internal_port,
            len(self.membership.ring or ()),
        )

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        if self._replacing is not None:
            self._replacing.cancel()
        await self.driver.stop()
        await self.verifier.stop()
        await self.backups.stop()
        await self.anti_entropy.stop()
        await self.local.stop()
        await self.coordinator.drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.gossip_loop.stop()
        await self.heard.flush()
        await self.clock.stop()
        await self.hints.stop()
        await self.server.stop()
        self.client.close()
        self.hints_engine.close()

    def ready(self) -> bool:
        return self._ready

    def _check_open(self) -> None:
        if self._stopping:
            raise Unavailable("node is shutting down", retry_after=1.0)

    # ------------------------------------------------------------------ KeyValueService

    def owner_url(self, key: bytes) -> str:
        ring = self.membership.ring
        return ring.owner_url(key) if ring is not None else self.node_url

    async def get(self, key: bytes, consistency: Consistency | None = None) -> ReadResult:
        if self._stopping:  # _check_open, inline on the two hot paths
            self._check_open()
        return await self.coordinator.get(key, consistency)

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        consistency: Consistency | None = None,
    ) -> int:
        if self._stopping:
            self._check_open()
        return await self.coordinator.put(key, value, ttl_ms=ttl_ms, consistency=consistency)

    async def delete(self, key: bytes, consistency: Consistency | None = None) -> bool:
        self._check_open()
        return await self.coordinator.delete(key, consistency)

    async def atomic_update(
        self, key: bytes, fn: ReadModifyWrite, consistency: Consistency | None = None
    ) -> object:
        self._check_open()
        return await self.atomic.atomic_update(key, fn, consistency)

    async def atomic_batch(
        self, steps: list[Step], watches: list[Watch], consistency: Consistency | None = None
    ) -> list[StepResult] | None:
        self._check_open()
        return await self.transactions.run(steps, watches, consistency)

    async def cluster_keys(self, match: Callable[[bytes], bool]) -> list[bytes]:
        """Every live key of the cluster that `match`es: the union of every member's own keys
        (a member that does not answer is skipped: its keys have other replicas), each then
        read at the default consistency so that a replica's leftover is not reported."""
        self._check_open()
        record = self.keeper.state
        members = list(record.all_members()) if record is not None else [self.node_id]
        candidates: set[bytes] = set()
        for node in members:
            try:
                candidates.update(k for k in await self._keys_of(node) if match(k))
            except (rpc.PeerUnavailable, rpc.RpcError) as exc:
                log.warning("KEYS: member %s did not list its keys: %s", node, exc)
        ordered = sorted(candidates)
        live: list[bytes] = []
        for i in range(0, len(ordered), KEYS_READ_BATCH):
            chunk = ordered[i : i + KEYS_READ_BATCH]
            results = await asyncio.gather(*(self.coordinator.get(k) for k in chunk))
            live.extend(k for k, r in zip(chunk, results, strict=True) if r.value is not None)
        return live

    async def _keys_of(self, node: str) -> list[bytes]:
        keys: list[bytes] = []
        after: bytes | None = None
        while True:
            if node == self.node_id:
                page = [k for k, _ in self.local_items(after, KEYS_PAGE)]
            else:
                request = encode_keys_request(after, KEYS_PAGE)
                reply = await self.coordinator.call(node, rpc.LOCAL_KEYS, request, 10.0)
                page = decode_keys(reply)
            keys.extend(page)
            if len(page) < KEYS_PAGE:
                return keys
            after = page[-1]

    def _handle_local_keys(self, body: bytes) -> bytes:
        after, limit = decode_keys_request(body)
        return encode_keys([k for k, _ in self.local_items(after, min(limit, KEYS_PAGE))])

    async def replica_report(self, key: bytes) -> ReplicaReport:
        self._check_open()
        holdings = []
        for i, (node, live) in enumerate(await self.coordinator.replica_values(key)):
            holdings.append(
                ReplicaHolding(
                    node_url=self.membership.url_of(node) or node,
                    is_primary=i == 0,
                    is_local=node == self.node_id,
                    has_value=bool(live),
                    answered=live is not None,
                )
            )
        rf = len(holdings)
        quorum = required_acks(Consistency.QUORUM, rf) if rf else 0
        return ReplicaReport(rf, quorum, tuple(holdings))

    def local_items(self, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        if not self.handed_off:
            return self.local.local_items(after, limit)
        # Ranges handed off in a transition's cleanup are no longer this node's keys.
        items: list[tuple[bytes, bytes]] = []
        while len(items) < limit:
            page = self.local.local_items(after, limit)
            items.extend(kv for kv in page if token_of(kv[0]) not in self.handed_off)
            if len(page) < limit:
                break
            after = page[-1][0]
        return items[:limit]

    def local_count(self) -> int:
        count = self.local.local_count()
        if self.handed_off:
            # Keys in handed-off ranges (not purged yet, or landed after) are not this node's.
            count -= self.streams.handed_off_keys()
        return max(count, 0)

    def stats(self) -> dict:
        stats = self.local.stats()
        stats["cluster"] = {
            **self.coordinator.counters,
            **self.atomic.counters,
            "hints": self.hints.stats(),
            "background": self.background.stats(),
            "rpc_served": self.server.served,
            "replica_mutations": self.replica.applied,
            "replica_batches": self.replica.batches,
            "rpc_expired": self.server.expired,
            "rpc_rejected": self.server.rejected,
            "rpc_oversized": self.server.oversized,
            "rpc_strangers": self.server.strangers,
            "rpc_evicted": self.server.evicted,
            "rpc_hello_timeouts": self.server.hello_timeouts,
            "gossip_rounds": self.gossip_loop.rounds,
            "ring_epoch": self.membership.ring.epoch if self.membership.ring else None,
        }
        stats["clock"] = {
            **self.clock.stats(),
            "hlc_not_adopted": self.hlc.not_adopted,
            # How far this node's hybrid clock runs ahead of its own wall clock (bounded by
            # the maximum offset: no peer can drag it further).
            "hlc_ahead_ms": max(0, millis_of(self.hlc.last) - wall_millis()),
            "streamed_timestamps_refused": self.streams.counters["timestamps_refused"],
        }
        stats["table_streaming"] = self.streams.tables.stats()
        stats["range_purge"] = self.streams.purge_stats()
        # How this node started (limedb.cluster.rejoin) and whether it answers replica reads
        # (not while a member back on an empty disk waits to be replaced).
        stats["auto_replace"] = {
            "start_mode": self.start_mode.value,
            "serves_replica_reads": self.replica.serves_reads,
        }
        return stats

    def cluster_view(self) -> ClusterView:
        """The ring record's members (not those that left) with their membership state and
        failure-detector liveness, and the ring's tokens, for /api/v1/cluster/*."""
        snapshot = self.membership.snapshot()
        ring = snapshot.ring
        record = self.keeper.state
        listed = member_states(record, self.driver.liveness) if record is not None else []
        members = [member_view(entry, snapshot) for entry in listed if entry["state"] != "Left"]
        if record is None:  # nothing learned yet: only this node, not yet in any ring
            members.append(
                MemberView(self.node_id, self.node_url, "Joining", "active", snapshot.heartbeat)
            )
        left = {entry["node_id"] for entry in listed if entry["state"] == "Left"}
        known = {m.node_id for m in members} | left
        return ClusterView(
            node_id=self.node_id,
            node_url=self.node_url,
            members=tuple(members),
            ring_epoch=ring.epoch if ring is not None else 0,
            vnodes_per_node=ring.vnodes if ring is not None else self.config.vnodes,
            tokens=self._tokens(ring),
            heartbeat=snapshot.heartbeat,
            outsiders=outsiders(snapshot, known),
        )

    def _tokens(self, ring: Ring | None) -> tuple[tuple[int, str], ...]:
        if ring is None:
            return ()
        if self._view_cache is None or self._view_cache[0] is not ring:
            tokens = tuple((r.end, ring.url_of(r.node_id)) for r in ring.ranges())
            self._view_cache = (ring, tokens)
        return self._view_cache[1]
