"""Pydantic models that document the JSON shapes in the OpenAPI document.

Handlers serialize with orjson directly (the models are not on the request path); the compat
and schemathesis tests check that what is sent matches what is documented here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from limedb.api.validation import MAX_TTL_SECONDS


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in words")


class GetResponse(BaseModel):
    value: str
    nodeUrl: str = Field(description="URL of the node that owns the key")
    timestamp_micros: int = Field(
        description="when the value was written: its version's wall-clock time, in "
        "microseconds since the epoch (millisecond precision)"
    )


class ReplicaEntry(BaseModel):
    node_url: str
    is_primary: bool = Field(description="the first replica in ring order")
    is_local: bool = Field(description="the replica is the node that answered")
    has_value: bool = Field(description="the replica holds a live value (false if unreachable)")
    answered: bool = Field(description="the replica answered the question (LimeDB extension)")


class ReplicasResponse(BaseModel):
    key: str
    replication_factor: int
    quorum: int
    replicas: list[ReplicaEntry]


class KeyEntry(BaseModel):
    key: str
    value: str
    size: int = Field(description="value size in bytes")


class KeysPage(BaseModel):
    keys: list[KeyEntry]
    total: int
    page: int
    pageSize: int
    totalPages: int


class MemberState(BaseModel):
    nodeId: str
    url: str
    state: str = Field(description="Joining | Normal | Leaving | Left")
    status: str = Field(description="active | stale | dead (failure detector)")


class ClusterState(BaseModel):
    nodeUrl: str
    peers: list[str] = Field(description="every member URL, this node included")
    totalNodes: int
    status: str
    ringEpoch: int
    members: list[MemberState]


class TokenRange(BaseModel):
    start: int
    end: int
    hash: int
    size: int


class TokenRangeDegrees(BaseModel):
    startHash: int
    endHash: int
    hash: int
    startDegrees: float
    endDegrees: float
    sizeDegrees: float
    sizeHash: int


class RingInfo(BaseModel):
    totalNodes: int
    virtualNodes: int
    virtualNodesPerNode: int
    virtualNodeDistribution: dict[str, int]
    currentNode: str
    allNodes: list[str]
    ranges: dict[str, list[TokenRange]]
    rangesDegrees: dict[str, list[TokenRangeDegrees]]


class PeerDetail(BaseModel):
    url: str
    heartbeat: int
    lag: float
    status: str = Field(description="active | stale | dead")


class GossipInfo(BaseModel):
    """With peers: every field; a standalone node: status, node_heartbeat, total_peers,
    cluster_health "N/A" and node_url."""

    model_config = ConfigDict(extra="allow")

    node_url: str
    node_heartbeat: int
    total_peers: int
    cluster_health: str
    status: str | None = None
    active_peers: int | None = None
    stale_peers: int | None = None
    dead_peers: int | None = None
    convergence_rate: float | None = None
    average_lag: float | None = None
    max_lag: float | None = None
    peer_details: list[PeerDetail] | None = None
    timestamp: int | None = None


class DiskHealth(BaseModel):
    full: bool = Field(description="writes are refused (507) until space is freed")
    outOfDescriptors: bool = Field(
        description="writes are refused (503) or a flush is blocked: no file descriptor left"
    )
    readOnly: bool = Field(description="the node serves reads only (full, or opened full)")
    since: float | None = Field(description="when the disk filled up (Unix seconds)")
    reason: str | None = Field(description="the failing file and error, or a blocked flush")
    refusedWrites: int = Field(
        description="writes refused for a full disk (or no descriptor left) since the start"
    )


class Health(BaseModel):
    status: str
    service: str
    version: str
    nodeUrl: str
    timestamp: int
    disk: DiskHealth
    storage: dict[str, Any]
    clock: dict[str, Any] | None = Field(
        default=None,
        description="clustered nodes: clock offset from the majority, whether this node "
        "coordinates writes, refused timestamps (docs/operations.md, Clock skew)",
    )


class Probe(BaseModel):
    status: str


class PutResult(BaseModel):
    ts: int = Field(description="hybrid logical clock timestamp of the new version")


class DeleteResult(BaseModel):
    deleted: bool = Field(description="whether a live value existed")


BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Ttl = Annotated[
    float | None, Field(default=None, gt=0, le=MAX_TTL_SECONDS, description="seconds to expiry")
]


class BatchPutText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    value: str = Field(description="the value as UTF-8 text")
    ttl: Ttl = None


class BatchPutBinary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    value_base64: str = Field(pattern=BASE64_PATTERN, description="the value's bytes, base64")
    ttl: Ttl = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    get: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="keys to read"
    )
    put: list[BatchPutText | BatchPutBinary] = Field(
        default_factory=list, description="values to write (before the reads)"
    )
    encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="how the response carries the values read"
    )


class BatchResponse(BaseModel):
    values: dict[str, str | None] = Field(description="each requested key: value or null")
    written: int
