"""uvicorn's httptools protocol with bounds on what one connection may hold.

Every client connection holds a file descriptor and every request memory until it is answered
(docs/operations.md, "Connections, buffers and descriptors"), so:
- a connection beyond `max_connections` or the node's descriptor budget (`ConnectionBudget`,
  shared with RESP) is answered 503 and closed as soon as it is accepted;
- a connection without a request in progress is closed after `http_idle_timeout_s` (uvicorn's
  keep-alive timer, armed here for the first request too);
- `sweep` answers 408 and closes a connection whose request headers or body take longer than
  `http_header_timeout_s` / `http_body_timeout_s`;
- request headers larger than `max_header_bytes` are answered 431 and the connection closed;
- a connection beyond the caps may still take one of `probe_connections` places: it has a
  second to send one request, which is served only if it is a probe, /metrics or /admin call
  (a kubelet must not restart a node for being full of clients), and is then closed.
Bodies are bounded per route by `fastpath` (ASGI routes) and `wire` (hot routes).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from limedb.api import hot
from limedb.api import operations as ops
from limedb.api.errors import ApiError, retry_after_header
from limedb.api.fastpath import admitted
from limedb.api.state import NodeState

HEADER, BODY = "http_header", "http_body"
PROBE_WAIT_S = 1.0  # how long a connection beyond the caps may take to send its request


def too_many_connections() -> ops.Reply:
    return hot.error_reply(
        ApiError(503, "too many open connections; retry later", retry_after_header(1))
    )


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the node's connection limits and request timeouts."""

    node_state: NodeState
    # Per connection: whether it holds a place in the connection budget, and the request being
    # read (HEADER or BODY, since when on the loop's clock) for `sweep`.
    counted: str | None = None  # the budget place this connection holds: "http" or "probe"
    reading: str | None = None
    reading_since = 0.0
    header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        state = self.node_state
        budget = state.connections
        wait = self.timeout_keep_alive
        if budget.try_open("http", state.config.max_connections):
            self.counted = "http"
        elif budget.try_open_probe(state.config.probe_connections):
            self.counted, wait = "probe", PROBE_WAIT_S
        else:
            # Answered before the request is read: holding the descriptor any longer is what
            # the refusal is there to avoid.
            self.write_reply(too_many_connections(), keep_alive=False, head_only=False)
            transport.close()
            return
        # uvicorn arms its keep-alive timer after each response; arm it for the first request
        # too, or a client that connects and sends nothing holds its descriptor forever.
        self.timeout_keep_alive_task = self.loop.call_later(wait, self.timeout_keep_alive_handler)

    def admit_probe(self) -> bool:
        """For a connection in a probe place, once its request's headers are in: whether it
        is served (a probe, /metrics, /admin: then the connection closes after it); any other
        request is refused with 503 and the connection closed."""
        if admitted(httptools.parse_url(self.url).path):
            self.reading = None
            self.write_reply(too_many_connections(), keep_alive=False, head_only=False)
            self.transport.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted is not None:
            self.node_state.connections.release(self.counted)
            self.counted = None
        self.reading = None
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.node_state.connections.closed["http_idle"] += 1
        super().timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.reading != HEADER:
            return
        # Still inside a request's headers after this read: httptools would keep every byte
        # of them, so their size is bounded here (to the limit plus one read).
        self.header_bytes += len(data)
        limit = self.node_state.config.max_header_bytes
        if self.header_bytes > limit and not self.transport.is_closing():
            self._give_up(HEADER, ApiError(431, f"request line and headers exceed {limit} bytes"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading, self.reading_since, self.header_bytes = HEADER, self.loop.time(), 0

    def read_overdue(self, now: float) -> None:
        """Close the connection if the request being read is late (called by `sweep`)."""
        config = self.node_state.config
        phase = self.reading
        if phase is None or self.transport.is_closing():
            return
        limit = config.http_header_timeout_s if phase == HEADER else config.http_body_timeout_s
        if phase == HEADER and self.counted == "probe":
            limit = PROBE_WAIT_S
        if now - self.reading_since <= limit:
            return
        if self.flow.read_paused:
            # The node stopped reading (a pipelined request waits its turn, or the app has not
            # taken the body yet): the delay is not the client's, so its clock starts again.
            self.reading_since = now
            return
        self.node_state.connections.closed[phase] += 1
        what = "headers" if phase == HEADER else "body"
        self._give_up(phase, ApiError(408, f"request {what} not received within {limit} s"))

    def on_headers_complete(self) -> None:
        self.reading_body()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.reading = None
        super().on_message_complete()

    def reading_body(self) -> None:
        """The headers are in: from now on the request's body is being read."""
        self.reading, self.reading_since = BODY, self.loop.time()

    def _give_up(self, phase: str, error: ApiError) -> None:
        """Stop reading the request in `phase`: answer `error` unless a response is already
        under way on the connection (it would be cut in two), then close."""
        self.reading = None
        cycle = self.cycle
        # A request's headers belong to no cycle yet (`self.cycle` is the one before); its
        # body belongs to `self.cycle`.
        responding = cycle is not None and (
            (phase == HEADER and not cycle.response_complete)
            or (phase == BODY and cycle.response_started)
        )
        if not responding:
            self.write_reply(hot.error_reply(error), keep_alive=False, head_only=False)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() returns http.disconnect
            cycle.message_event.set()
        self.transport.close()

    def write_reply(self, reply: ops.Reply, keep_alive: bool, head_only: bool) -> None:
        """Write a whole response (`head_only`: without its body, for HEAD)."""
        body = reply.body
        head = (
            STATUS_LINE[reply.status]
            + _default_headers(self.server_state.default_headers)
            + b"content-type: "
            + reply.content_type
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n"
        )
        for name, value in reply.headers:
            head += name + b": " + value + b"\r\n"
        if not keep_alive:
            head += b"connection: close\r\n"
        self.transport.write(head + b"\r\n" if head_only else head + b"\r\n" + body)


_joined_headers: tuple[object, bytes] = (None, b"")


def _default_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (the Date header) as bytes; uvicorn swaps the list each second."""
    global _joined_headers
    if _joined_headers[0] is not headers:
        _joined_headers = (headers, b"".join(n + b": " + v + b"\r\n" for n, v in headers))
    return _joined_headers[1]


async def sweep(connections: set[Any], every_s: float = 1.0) -> None:
    """Forever: close the connections (uvicorn's set) whose request is being read too slowly.
    One pass a second over every connection costs less than a timer per request would."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, BoundedProtocol):
                connection.read_overdue(now)
