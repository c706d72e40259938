"""What a node knows about its cluster, as plain values: the data behind /api/v1/cluster/*.

A KeyValueService exposes `cluster_view() -> ClusterView`; the HTTP routes only format it, so a
single node (`LocalService`) and the distributed coordinator feed the same handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MemberView:
    """One ring member as this node sees it.

    `state` is the membership state (Joining / Normal / Leaving / Left); `status` is what the
    failure detector says (active / stale / dead); `lag` is how many of its heartbeats this node
    has missed (gossip intervals since it was last heard from), the original LimeDB's unit.
    """

    node_id: str
    url: str
    state: str = "Normal"
    status: str = "active"
    heartbeat: int = 0
    lag: int = 0


@dataclass(frozen=True, slots=True)
class ClusterView:
    node_id: str
    node_url: str
    members: tuple[MemberView, ...]
    ring_epoch: int
    vnodes_per_node: int
    # (token, owner url) for every virtual node, sorted by token.
    tokens: tuple[tuple[int, str], ...]
    heartbeat: int
    extra: dict = field(default_factory=dict)
    # Live peers heard through gossip that the ring record does not name (not yet joined):
    # gossip peers, not ring members.
    outsiders: tuple[MemberView, ...] = ()

    @property
    def peers(self) -> tuple[MemberView, ...]:
        """Members other than this node."""
        return tuple(m for m in self.members if m.url != self.node_url)

    @property
    def gossip_peers(self) -> tuple[MemberView, ...]:
        """Who this node gossips with: the other members, and the outsiders."""
        return self.peers + self.outsiders
