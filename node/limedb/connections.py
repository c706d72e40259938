"""The node's budget of client connections (HTTP and RESP together) under its descriptor limit.

Every client connection holds a file descriptor, and so do the storage engine, the peers' RPC
connections and the hint files. Once RLIMIT_NOFILE is reached, accept() fails (libuv then
accepts and resets the connection: the client gets no answer) and so does every open() the
engine tries, which turns into failed writes on connections that were already served. So the
listeners admit a client only while the connections open stay `reserve` descriptors below the
limit, and refuse the others cleanly (HTTP 503, RESP `-ERR max number of clients reached`),
which needs a descriptor only for the moment of the refusal. The limit is read at each accept,
so a limit changed at run time (`prlimit --pid`) takes effect at once. Should descriptors run
out anyway (a limit lowered below what the node holds), a request that needed one is refused
with 503 (RESP: UNAVAILABLE), never a 500: `out_of_descriptors` recognises the error and
`ConnectionBudget.exhausted` counts and logs it.
"""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("limedb.connections")

# What an unlimited RLIMIT_NOFILE counts as: more descriptors than any node will hold.
UNLIMITED = 1 << 20
LOG_EVERY_S = 10.0


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether `exc` says the process (EMFILE) or the system (ENFILE) has no descriptor left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


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
    # "probe": HTTP connections beyond the caps, for one probe request each.
    open: dict[str, int] = field(default_factory=lambda: {"http": 0, "resp": 0, "probe": 0})
    refused: dict[str, int] = field(default_factory=lambda: {"http": 0, "resp": 0, "probe": 0})
    # Connections the node closed: idle too long, or a request that did not arrive in time.
    closed: dict[str, int] = field(
        default_factory=lambda: {"http_idle": 0, "http_header": 0, "http_body": 0, "resp_idle": 0}
    )
    resp_buffered_bytes: int = 0
    resp_buffer_refusals: int = 0
    # Bytes of HTTP request bodies held (received, the request not answered yet).
    http_buffered_bytes: int = 0
    http_buffer_refusals: int = 0
    # Requests refused because an operation found no descriptor left (EMFILE, ENFILE).
    descriptor_errors: int = 0
    _logged_at: float = -LOG_EVERY_S

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

    def try_open_probe(self, slots: int) -> bool:
        """Admit a connection beyond the caps for a probe (it takes a descriptor from the
        reserve) if fewer than `slots` are open; else count a refusal."""
        if self.open["probe"] >= slots:
            self.refused["probe"] += 1
            return False
        self.open["probe"] += 1
        return True

    def release(self, kind: str) -> None:
        self.open[kind] -= 1

    def exhausted(self, exc: Exception) -> str:
        """Count a request refused for want of a descriptor (logged at most every 10 s): an
        OSError the request met, or the storage engine's refusal of its write
        (DescriptorsExhausted); the message for its client."""
        self.descriptor_errors += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "out of file descriptors (limit %d, %d client connections open): %s; "
                "requests that need one are refused with 503 (%d so far)",
                descriptor_limit(),
                sum(self.open.values()),
                exc,
                self.descriptor_errors,
            )
        if isinstance(exc, OSError):
            return f"node out of file descriptors ({exc.strerror}); retry later"
        return str(exc)

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
        yield from (opened, refused, closed)
        # (name, help, value) of the unlabelled ones.
        gauges = (
            (
                "limedb_client_connection_capacity",
                "client connections the descriptor limit leaves room for (RLIMIT_NOFILE - reserve)",
                self.capacity(),
            ),
            (
                "limedb_resp_buffered_bytes",
                "bytes of RESP requests buffered, all clients",
                self.resp_buffered_bytes,
            ),
            (
                "limedb_http_buffered_body_bytes",
                "bytes of HTTP request bodies held, all requests",
                self.http_buffered_bytes,
            ),
        )
        counters = (
            (
                "limedb_resp_buffer_refusals",
                "RESP clients disconnected because the node-wide request buffer cap was reached",
                self.resp_buffer_refusals,
            ),
            (
                "limedb_http_buffer_refusals",
                "HTTP requests refused (503) because max_buffered_body_bytes was reached",
                self.http_buffer_refusals,
            ),
            (
                "limedb_descriptor_exhaustion",
                "requests refused (503) because the node had no file descriptor left",
                self.descriptor_errors,
            ),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
