"""The per-app node state the routes share: config, limits, statistics, connections, the service.

The service is attached only once storage recovery has finished, so until then every data route
answers 503 and /readyz says not ready, while /livez already answers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from limedb.api.errors import not_ready
from limedb.api.metrics import RouteStats
from limedb.api.overload import Admission
from limedb.api.validation import Limits
from limedb.auth import Authenticator
from limedb.cluster.service import NodeService
from limedb.config import Config
from limedb.connections import ConnectionBudget
from limedb.tls import TlsMaterial


@dataclass
class NodeState:
    config: Config
    limits: Limits
    stats: RouteStats = field(default_factory=RouteStats)
    service: NodeService | None = None
    # Checks credentials against the cluster's users (limedb.auth); set with the service.
    auth: Authenticator | None = None
    admission: Admission = field(init=False)
    # Client connections of this node, HTTP and RESP (the RESP listener shares it).
    connections: ConnectionBudget = field(init=False)
    # More Prometheus collectors (objects with `collect()`) attached after start-up, such as
    # the RESP listener's command statistics; /metrics reads them at every scrape.
    collectors: list = field(default_factory=list)
    # The RESP listener's command totals (count, errors, latency buckets), when it runs.
    resp_totals: Callable[[], dict] | None = None
    # The node's certificates (limedb.tls) when tls_mode is on or required.
    tls: TlsMaterial | None = None

    def __post_init__(self) -> None:
        self.admission = Admission(self.config.max_inflight, self.config.max_queued)
        self.connections = ConnectionBudget(self.config.fd_reserve)

    @property
    def inflight(self) -> int:
        """Client requests running now (admitted, not yet answered)."""
        return self.admission.running

    def peer_verify(self) -> ssl.SSLContext | bool:
        """What the node's HTTP calls to peers verify with (httpx `verify`): the cluster CA and
        the node's own certificate as client certificate, as of now (a rotation applies to the
        next call)."""
        return self.tls.contexts.client if self.tls is not None else True

    def require_service(self) -> NodeService:
        service = self.service
        if service is None:
            raise not_ready()
        return service

    def is_ready(self) -> bool:
        return self.service is not None and self.service.ready()
