"""The token ring: an immutable value saying which nodes own which keys at one epoch.

Placement follows the original LimeDB exactly when a node's id is its URL: virtual node i of a
node sits at XXH64(f"{node_id}:{i}"), a key sits at XXH64(key), and the owner is the first
token >= the key's token, wrapping past the largest token back to the smallest. Replicas are
the next distinct nodes walking clockwise from there.

A ring never changes; a membership change makes a new ring with a higher epoch, so a caller
that holds a ring holds a consistent answer for every key.
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import orjson
import xxhash

from limedb.cluster.keys import MAX_TOKEN

_xxh64 = xxhash.xxh64_intdigest
_bisect_left = bisect.bisect_left
TOKEN_SPACE = MAX_TOKEN + 1
DEFAULT_VNODES = 256


def key_token(key: bytes | str | int) -> int:
    """The ring position of a key (raw XXH64 of its bytes); an int is taken as a token."""
    if isinstance(key, int):
        if not 0 <= key <= MAX_TOKEN:
            raise ValueError(f"token {key} outside 0..2**64-1")
        return key
    if isinstance(key, str):
        key = key.encode()
    return _xxh64(key)


def vnode_tokens(node_id: str, vnodes: int) -> list[int]:
    """Tokens of one node's virtual nodes; vnodes=0 means a single token, as in LimeDB."""
    return [_xxh64(f"{node_id}:{i}".encode()) for i in range(max(vnodes, 1))]


@dataclass(frozen=True, slots=True)
class TokenRange:
    """The tokens start..end inclusive (wrapping when start > end), owned by `node_id`.

    `end` is the vnode token itself; `start` is the previous vnode token + 1, as LimeDB
    reports ranges. A ring with a single token has one range covering the whole space.
    """

    start: int
    end: int
    node_id: str

    @property
    def size(self) -> int:
        """How many tokens the range holds (1..2**64)."""
        return (self.end - self.start) % TOKEN_SPACE + 1

    def __contains__(self, token: int) -> bool:
        if self.start <= self.end:
            return self.start <= token <= self.end
        return token >= self.start or token <= self.end


class Ring:
    """Immutable ring: `epoch`, `members` (node_id -> advertise_url) and `vnodes` per node.

    Lookups bisect a sorted token list. Replica lists for a given RF are computed once per
    vnode position on first use, so `replicas()` is a bisect plus a tuple index.
    """

    __slots__ = (
        "_cache_lock",
        "_digest",
        "_hash",
        "_members",
        "_owner_at",
        "_replicas_by_rf",
        "_tokens",
        "_url_to_id",
        "epoch",
        "vnodes",
    )

    def __init__(
        self,
        members: Mapping[str, str] | Iterable[str],
        vnodes: int = DEFAULT_VNODES,
        epoch: int = 1,
    ) -> None:
        if vnodes < 0:
            raise ValueError("vnodes must be >= 0")
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        if not isinstance(members, Mapping):
            # A bare list of URLs is LimeDB's model: the node id is the URL.
            members = {url: url for url in members}
        for node_id, url in members.items():
            if not node_id or not isinstance(node_id, str) or not isinstance(url, str):
                raise ValueError(f"bad ring member {node_id!r} -> {url!r}")
        self.epoch = epoch
        self.vnodes = vnodes
        self._members = MappingProxyType(dict(sorted(members.items())))
        self._url_to_id = {url: node_id for node_id, url in self._members.items()}
        # Sorting by (token, node_id) makes a (practically impossible) token collision resolve
        # the same way on every node.
        placed = sorted(
            (token, node_id) for node_id in self._members for token in vnode_tokens(node_id, vnodes)
        )
        self._tokens = [token for token, _ in placed]
        self._owner_at = tuple(node_id for _, node_id in placed)
        self._replicas_by_rf: dict[int, tuple[tuple[str, ...], ...]] = {}
        self._cache_lock = threading.Lock()
        self._digest: int | None = None
        self._hash: int | None = None

    # ----------------------------------------------------------------- identity

    @property
    def members(self) -> Mapping[str, str]:
        """node_id -> advertise_url, sorted by node id (read-only)."""
        return self._members

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self._members)

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(self._tokens)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self.epoch, self.vnodes, dict(self._members)) == (
            other.epoch,
            other.vnodes,
            dict(other._members),
        )

    def __hash__(self) -> int:
        # Cached: the transition plan's cache (limedb.cluster.transitions) hashes the rings on
        # every look at a transition's ranges.
        if self._hash is None:
            self._hash = hash((self.epoch, self.vnodes, tuple(self._members.items())))
        return self._hash

    def __repr__(self) -> str:
        return f"Ring(epoch={self.epoch}, vnodes={self.vnodes}, members={dict(self._members)})"

    def url_of(self, node_id: str) -> str:
        return self._members[node_id]

    def node_id_of_url(self, url: str) -> str | None:
        return self._url_to_id.get(url)

    # ----------------------------------------------------------------- placement

    def _position(self, key: bytes | str | int) -> int:
        tokens = self._tokens
        if not tokens:
            raise LookupError("the ring has no members")
        # bytes is the hot path (every request); skip key_token's checks for it.
        idx = _bisect_left(tokens, _xxh64(key) if type(key) is bytes else key_token(key))
        return 0 if idx == len(tokens) else idx

    def owner(self, key: bytes | str | int) -> str:
        """The node id owning a key (bytes/str) or a token (int)."""
        return self._owner_at[self._position(key)]

    def owner_url(self, key: bytes | str | int) -> str:
        return self._members[self.owner(key)]

    def replicas(self, key: bytes | str | int, rf: int) -> tuple[str, ...]:
        """The first `rf` distinct node ids clockwise from the key's owner (owner first).

        RF larger than the cluster is capped at the number of members.
        """
        if rf < 1:
            raise ValueError("rf must be >= 1")
        rf = min(rf, len(self._members))
        table = self._replicas_by_rf.get(rf)
        if table is None:
            table = self._build_replica_table(rf)
        return table[self._position(key)]

    def replica_urls(self, key: bytes | str | int, rf: int) -> tuple[str, ...]:
        return tuple(self._members[node_id] for node_id in self.replicas(key, rf))

    def _build_replica_table(self, rf: int) -> tuple[tuple[str, ...], ...]:
        owners = self._owner_at
        n = len(owners)
        table = []
        for start in range(n):
            chosen: list[str] = []
            i = start
            while len(chosen) < rf:
                node_id = owners[i]
                if node_id not in chosen:
                    chosen.append(node_id)
                i = (i + 1) % n
            table.append(tuple(chosen))
        built = tuple(table)
        with self._cache_lock:
            self._replicas_by_rf.setdefault(rf, built)
        return built

    # ----------------------------------------------------------------- ranges

    def ranges(self) -> list[TokenRange]:
        """Every vnode's range in token order; together they cover the token space once."""
        tokens = self._tokens
        return [
            TokenRange((tokens[i - 1] + 1) % TOKEN_SPACE, tokens[i], self._owner_at[i])
            for i in range(len(tokens))
        ]

    def ranges_of(self, node_id: str) -> list[TokenRange]:
        """The ranges a node owns as primary (first replica)."""
        return [r for r in self.ranges() if r.node_id == node_id]

    def replica_ranges(self, node_id: str, rf: int) -> list[TokenRange]:
        """The ranges a node holds a replica of at this RF (primary or not)."""
        rf = min(max(rf, 1), len(self._members))
        table = self._replicas_by_rf.get(rf) or self._build_replica_table(rf)
        return [r for i, r in enumerate(self.ranges()) if node_id in table[i]]

    def token_share(self) -> dict[str, float]:
        """Each node's primary fraction of the token space (sums to 1.0)."""
        share = dict.fromkeys(self._members, 0)
        for r in self.ranges():
            share[r.node_id] += r.size
        return {node_id: count / TOKEN_SPACE for node_id, count in share.items()}

    # ----------------------------------------------------------------- changes and records

    def with_member(self, node_id: str, url: str) -> Ring:
        """A new ring one epoch later with `node_id` added (or its URL changed)."""
        return Ring({**self._members, node_id: url}, self.vnodes, self.epoch + 1)

    def without_member(self, node_id: str) -> Ring:
        """A new ring one epoch later without `node_id`."""
        members = {k: v for k, v in self._members.items() if k != node_id}
        return Ring(members, self.vnodes, self.epoch + 1)

    def to_record(self) -> dict:
        """A JSON-able record of the ring, as gossiped and persisted."""
        return {"epoch": self.epoch, "vnodes": self.vnodes, "members": dict(self._members)}

    @classmethod
    def from_record(cls, record: Mapping) -> Ring:
        try:
            members = record["members"]
            if not isinstance(members, Mapping):
                raise TypeError("members must be an object")
            return _decoded(
                tuple(sorted(members.items())), int(record["vnodes"]), int(record["epoch"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad ring record: {exc}") from exc

    def digest(self) -> int:
        """A content hash, the last tie-break between two different rings of one epoch."""
        if self._digest is None:
            record = orjson.dumps(self.to_record(), option=orjson.OPT_SORT_KEYS)
            self._digest = _xxh64(record)
        return self._digest

    def rank(self) -> tuple[int, int, int]:
        """Which of two rings wins, the same way on every node: the higher epoch; at one
        epoch (only nodes bootstrapped from different static member lists disagree there)
        the ring with more members, then the higher digest."""
        return (self.epoch, len(self._members), self.digest())

    def newer_than(self, other: Ring | None) -> bool:
        """Whether this ring should replace `other`."""
        if other is None:
            return True
        if self.epoch != other.epoch:
            return self.epoch > other.epoch
        return self != other and self.rank() > other.rank()


@functools.lru_cache(maxsize=8)
def _decoded(members: tuple[tuple[str, str], ...], vnodes: int, epoch: int) -> Ring:
    # Every ring record a node adopts or compares (gossip brings one per progress checkpoint of
    # a transition, each naming the same two rings) decodes to the Ring it already holds,
    # with its tokens placed and its replica tables built, instead of a new one to fill again.
    return Ring(dict(members), vnodes, epoch)
