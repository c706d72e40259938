"""The node's budget of client connections (HTTP and RESP together) under its descriptor limit.

Every client connection holds a file descriptor, and so do the storage engine, the peers' RPC
connections and the hint files. Once RLIMIT_NOFILE is reached, accept() fails (libuv then
accepts and resets the connection: the client gets no answer) and so does every open() the
engine tries, which turns into failed writes on connections that were already served. So the
listeners admit a client only while the connections open stay `reserve` descriptors below the
limit, and refuse the others cleanly (HTTP 503, RESP `-ERR max number of clients reached`),
which needs a descriptor only for the moment of the refusal. The limit is read at each accept,
so a limit changed at run time (`prlimit --pid`) takes effect at once.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# What an unlimited RLIMIT_NOFILE counts as: more descriptors than any node will hold.
UNLIMITED = 1 << 20


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (UNLIMITED when it has none)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else min(soft, UNLIMITED)


def connection_capacity(nofile: int, reserve: int) -> int:
    """How many client connections fit under a descriptor limit with `reserve` kept free."""
    return max(0, nofile - reserve)


@dataclass(eq=False)
class ConnectionBudget:
    """Client connections open on this node, shared by the HTTP and the RESP listener, with
    the counters /metrics reports."""

    reserve: int
    open: dict[str, int] = field(default_factory=lambda: {"http": 0, "resp": 0})
    refused: dict[str, int] = field(default_factory=lambda: {"http": 0, "resp": 0})
    # Connections the node closed: idle too long, or a request that did not arrive in time.
    closed: dict[str, int] = field(
        default_factory=lambda: {"http_idle": 0, "http_header": 0, "http_body": 0, "resp_idle": 0}
    )
    resp_buffered_bytes: int = 0
    resp_buffer_refusals: int = 0

    def capacity(self) -> int:
        return connection_capacity(descriptor_limit(), self.reserve)

    def try_open(self, kind: str, cap: int) -> bool:
        """Admit one `kind` connection if both its listener's `cap` and the descriptor
        budget have room (the caller must `release` it when it closes); else count a refusal."""
        if self.open[kind] >= cap or sum(self.open.values()) >= self.capacity():
            self.refused[kind] += 1
            return False
        self.open[kind] += 1
        return True

    def release(self, kind: str) -> None:
        self.open[kind] -= 1

    def collect(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily(
            "limedb_client_connections", "client connections open", labels=["protocol"]
        )
        refused = CounterMetricFamily(
            "limedb_client_connections_refused",
            "client connections refused (listener cap or descriptor budget reached)",
            labels=["protocol"],
        )
        for kind in sorted(self.open):
            opened.add_metric([kind], self.open[kind])
            refused.add_metric([kind], self.refused[kind])
        closed = CounterMetricFamily(
            "limedb_client_connections_closed",
            "client connections the node closed: idle too long, or a request too slow",
            labels=["reason"],
        )
        for reason, count in sorted(self.closed.items()):
            closed.add_metric([reason], count)
        capacity = GaugeMetricFamily(
            "limedb_client_connection_capacity",
            "client connections the descriptor limit leaves room for (RLIMIT_NOFILE - reserve)",
        )
        capacity.add_metric([], self.capacity())
        buffered = GaugeMetricFamily(
            "limedb_resp_buffered_bytes", "bytes of RESP requests buffered, all clients"
        )
        buffered.add_metric([], self.resp_buffered_bytes)
        buffer_refusals = CounterMetricFamily(
            "limedb_resp_buffer_refusals",
            "RESP clients disconnected because the node-wide request buffer cap was reached",
        )
        buffer_refusals.add_metric([], self.resp_buffer_refusals)
        yield from (opened, refused, closed, capacity, buffered, buffer_refusals)
