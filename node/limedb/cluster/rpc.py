"""Internal node-to-node transport: framed binary RPC over persistent, multiplexed TCP.

A frame is `[u32 payload length][u8 kind][u32 request id][payload]`. Requests carry their
budget, the milliseconds the sender will wait (u64, 0 = no deadline), as the first eight bytes
of their payload; each side measures it on its own monotonic clock (limedb.cluster.deadline),
so clocks that disagree never expire a request, while a replica that was paused or stalled
longer than a request's budget drops that work nobody waits for any more. One connection per
peer carries any number of concurrent requests, matched to replies by request id; writes are
coalesced per event-loop turn so a burst of calls costs one send syscall.

When a cluster secret is configured, a connection must first present it in a HELLO frame;
any other first frame, or a wrong secret, gets an ERROR frame with code 401 and the connection
is closed. The client sends HELLO ahead of its first request without waiting for the reply.
A frame is size-checked from its header, before its payload is buffered: up to MAX_FRAME once
authenticated, MAX_HELLO_FRAME before; a larger one gets an ERROR frame (413) and the close.
Strangers (connections that have not presented the secret yet) are bounded too, so that nobody
without the secret can hold the node's descriptors: at most MAX_STRANGERS at a time (a new one
beyond that closes the oldest stranger, so a flood of idle connections cannot keep a peer,
whose HELLO comes right after its connect, from connecting), and each gets HELLO_TIMEOUT_S to
present its HELLO before it is refused (401) and closed. Authenticated peers are not capped:
they hold the secret.

With TLS (limedb.tls) the connection is mutual TLS: the listener takes only peers whose
certificate chains to the cluster CA (plaintext too in tls_mode `on`, limedb.tls_listener), and
the client verifies the peer's certificate and host name and presents its own; the HELLO with
the secret still follows, as a second factor.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import itertools
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from limedb.cluster import deadline
from limedb.tls import TlsMaterial
from limedb.tls_listener import SniffingListener, listen

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IBI")
DEADLINE = struct.Struct("!Q")  # the request's budget in milliseconds, 0 = none
REQUEST_HEADER = struct.Struct("!IBIQ")  # the frame header followed by the budget
ERROR_CODE = struct.Struct("!H")
MAX_FRAME = 64 << 20
# What an unauthenticated connection may send: its HELLO, nothing a stranger could use to make
# the node buffer megabytes.
MAX_HELLO_FRAME = 4096
# Connections open at once that have not presented the secret yet, and how long each may take
# to present it (a peer sends its HELLO ahead of its first request, without waiting).
MAX_STRANGERS = 64
HELLO_TIMEOUT_S = 10.0

# Frame kinds. Replies are REPLY or ERROR; everything else is a request.
REPLY = 0
ERROR = 1
HELLO = 2
PING = 3
REPLICATE = 10
READ = 11
GOSSIP = 12
ATOMIC = 14  # a Redis read-modify-write forwarded to the key's primary (limedb.cluster.atomic)
ATOMIC_BATCH = 15  # a RESP transaction forwarded to its keys' primary (limedb.cluster.transaction)
LOCAL_KEYS = 16  # a page of a node's own live keys, for RESP KEYS (limedb.cluster.node)
RING_RECORD = 20  # push (or, empty, pull) the ring record (limedb.cluster.ring.exchange)
STREAM_READ = 21  # range streaming (limedb.cluster.streaming)
STREAM_APPLY = 22
HANDOFF = 23
MERKLE = 24  # a replica's Merkle tree of a token range (limedb.cluster.repair)
PROPOSE = 25  # a ring change forwarded to the proposer (limedb.cluster.proposals)
BACKUP = 26  # a node's part of a backup or restore (limedb.cluster.backup.agent)
VERIFY_ROOTS = 30  # a replica's Merkle roots of many token ranges (limedb.cluster.verifier)
VERIFY_REPAIR = 31  # repair token ranges with the named replicas (limedb.cluster.verifier)
VERIFICATION = 32  # a finished verification's record, kept by every node
REJOIN = 33  # does the ring list a node that came back empty? (limedb.cluster.rejoin)
DRAIN = 34  # adopt the ring record, then finish the requests begun before (ring.exchange)
TABLE_CUT = 40  # range streaming as tables (limedb.cluster.table_streams)
TABLE_READ = 41
TABLE_WRITE = 42
TABLE_INGEST = 43
TABLE_DROP = 44
TABLE_FETCH = 45  # the target pulls a cut table from its source, then ingests it
TABLE_FETCH_SHARED = 46  # the same, its pace shared with the driver's other pulls to the node

# Error codes, HTTP-like so that logs read naturally.
UNAUTHORIZED = 401
NOT_FOUND = 404
TOO_LARGE = 413
EXPIRED = 504
INSUFFICIENT_STORAGE = 507  # the replica's disk is full (limedb.storage.errors.DiskFullError)
UNAVAILABLE = 503  # the replica cannot serve it now (e.g. out of file descriptors)
FAILED = 500
TIMESTAMP_REFUSED = 422  # a timestamp beyond the maximum clock offset (cluster.clock_offset)

Handler = Callable[[bytes], "bytes | Awaitable[bytes]"]
# A handler that answers later, without a future per request: it gets the request body, the
# connection and the request id, and sends its reply frame through `Replies.send_now`
# (limedb.cluster.replica answers every REPLICATE of a batch once its fsync covers them).
DeferredHandler = Callable[[bytes, "Replies", int], None]
# How a request sent with `PeerConnection.request_then` is answered: (reply body, None) or
# (None, the error), called from the connection's data_received (no future, no loop hop).
Answer = Callable[["bytes | None", "BaseException | None"], None]
# Send one request to a node by id: (node, kind, payload, timeout_s) -> the reply body.
Call = Callable[[str, int, bytes, float], Awaitable[bytes]]


class Replies(Protocol):
    """A server connection, as a deferred handler answers through it."""

    def send(self, frame: bytes) -> None: ...

    def send_now(self, frames: list[bytes]) -> None: ...


class RpcError(Exception):
    """The peer answered with an error frame."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("limedb_rpc_peer", default="")


def current_peer() -> str:
    """The address (host:port) of the peer whose request is being handled; '' elsewhere."""
    return _PEER.get()


class PeerUnavailable(Exception):
    """The peer could not be reached, closed the connection, or did not answer in time."""


def encode_frame(kind: int, request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind, request_id) + payload


def error_frame(request_id: int, exc: BaseException) -> bytes:
    """The ERROR frame a handler's failure becomes: its code for an RpcError, else 500."""
    if isinstance(exc, RpcError):
        return encode_frame(ERROR, request_id, error_payload(exc.code, exc.message))
    return encode_frame(ERROR, request_id, error_payload(FAILED, f"{type(exc).__name__}: {exc}"))


def error_payload(code: int, message: str) -> bytes:
    return ERROR_CODE.pack(code) + message.encode()


def decode_error(payload: bytes) -> RpcError:
    (code,) = ERROR_CODE.unpack_from(payload)
    return RpcError(code, payload[ERROR_CODE.size :].decode(errors="replace"))


# A connection whose sent bytes stay unacknowledged this long is dead (a partition, a vanished
# host): the kernel closes it instead of retransmitting with backoff for many minutes, and a
# heal then finds a fresh connection rather than one whose next retransmission is 20 s away.
# A paused peer still acknowledges (its kernel does), so this never cuts a slow peer.
USER_TIMEOUT_MS = 5000
# Idle connections learn the same through keepalive probes: idle 2 s, then 3 probes 1 s apart.
KEEPALIVE = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),) + tuple(
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
)


def _tune_socket(sock: socket.socket) -> None:
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), *KEEPALIVE]
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


class _FramedProtocol(asyncio.Protocol):
    """Splits the byte stream into frames and batches outgoing frames per loop turn."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.max_frame = MAX_FRAME

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _tune_socket(sock)

    def send(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_now(self, frames: list[bytes]) -> None:
        """Send `frames` (and whatever waits for this turn's flush) with one write now; from a
        callback that answers many requests at once."""
        self._out.extend(frames)
        if not self._flush_scheduled and self._out:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        if not buf:
            # The usual case, nothing left over: frames are cut from `data` itself, and only
            # a partial frame at its end is kept.
            offset = self._frames_of(data)
            if offset < len(data) and self.transport is not None:
                buf += data[offset:] if offset else data
            return
        buf += data
        offset = 0
        size = len(buf)
        while size - offset >= HEADER.size:
            length, kind, request_id = HEADER.unpack_from(buf, offset)
            if length > self.max_frame:
                buf.clear()
                self.frame_too_large(request_id, length)
                return
            end = offset + HEADER.size + length
            if end > size:
                break
            payload = bytes(buf[offset + HEADER.size : end])
            offset = end
            self.frame_received(kind, request_id, payload)
            if self.transport is None or self.transport.is_closing():
                buf.clear()
                return
        if offset:
            del buf[:offset]

    def _frames_of(self, data: bytes) -> int:
        """Hand over every whole frame at the start of `data`; returns where they end (len
        of data when the connection was closed or a frame refused meanwhile)."""
        offset = 0
        size = len(data)
        header = HEADER.size
        while size - offset >= header:
            length, kind, request_id = HEADER.unpack_from(data, offset)
            if length > self.max_frame:
                self.frame_too_large(request_id, length)
                return size
            end = offset + header + length
            if end > size:
                break
            payload = data[offset + header : end]
            offset = end
            self.frame_received(kind, request_id, payload)
            if self.transport is None or self.transport.is_closing():
                return size
        return offset

    def frame_too_large(self, request_id: int, length: int) -> None:
        if self.transport is not None:
            self.transport.close()

    def frame_received(self, kind: int, request_id: int, payload: bytes) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------- server


class RpcServer:
    """Accepts peer connections and dispatches request frames to registered handlers.

    A handler takes the request body (budget already stripped and checked) and returns the
    reply body, or an awaitable of it. Raising RpcError sends that code; any other exception
    is reported as 500 so one bad request never takes the connection down.
    """

    def __init__(
        self,
        secret: str | None = None,
        tls: TlsMaterial | None = None,
        max_strangers: int = MAX_STRANGERS,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ) -> None:
        self._secret = secret.encode() if secret else None
        self.max_strangers = max_strangers
        self.hello_timeout_s = hello_timeout_s
        # Open connections that have not presented the secret yet, oldest first.
        self._strangers: dict[_ServerProtocol, None] = {}
        self.evicted = 0  # strangers closed because MAX_STRANGERS newer ones arrived
        self.hello_timeouts = 0  # strangers closed for not presenting the secret in time
        self._tls = tls if tls is not None and tls.serves("internal") else None
        self._handlers: dict[int, Handler] = {HELLO: lambda _: b"", PING: lambda _: b""}
        self._deferred: dict[int, DeferredHandler] = {}
        self._server: asyncio.base_events.Server | SniffingListener | None = None
        self._connections: set[_ServerProtocol] = set()
        self.stalls = deadline.LoopStalls()
        self.expired = 0
        self.served = 0
        self.rejected = 0
        self.oversized = 0

    def register(self, kind: int, handler: Handler) -> None:
        self._handlers[kind] = handler
        self._deferred.pop(kind, None)

    def register_deferred(self, kind: int, handler: DeferredHandler) -> None:
        """`handler(body, connection, request_id)` answers through `connection.send_now`."""
        self._deferred[kind] = handler
        self._handlers.pop(kind, None)

    async def start(self, host: str, port: int) -> None:
        self._server = await listen(
            lambda: _ServerProtocol(self),
            host,
            port,
            backlog=512,
            tls=self._tls,
            listener="internal",
        )
        self.stalls.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every peer connection (peers then hint what they send)."""
        self.stalls.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()

    @property
    def strangers(self) -> int:
        return len(self._strangers)

    def check_secret(self, presented: bytes) -> bool:
        return self._secret is None or hmac.compare_digest(presented, self._secret)

    @property
    def needs_hello(self) -> bool:
        return self._secret is not None


class _ServerProtocol(_FramedProtocol):
    def __init__(self, server: RpcServer) -> None:
        super().__init__()
        self._server = server
        self._authenticated = not server.needs_hello
        self._peer = ""
        self._hello_timer: asyncio.TimerHandle | None = None
        # How long the frames being read now may have waited unread, in milliseconds.
        self._waited_ms = 0.0
        if not self._authenticated:
            self.max_frame = MAX_HELLO_FRAME

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._server
        server._connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._authenticated:
            if len(server._strangers) >= server.max_strangers:
                server.evicted += 1
                next(iter(server._strangers))._refuse("too many connections without the secret")
            server._strangers[self] = None
            self._hello_timer = self.loop.call_later(server.hello_timeout_s, self._hello_late)

    def data_received(self, data: bytes) -> None:
        # Every frame of these bytes waited as long as any (the loop's clock does not move
        # within one callback): the stall is read once here, not once per frame.
        self._waited_ms = self._server.stalls.waited_s() * 1000
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._known()

    def _known(self) -> None:
        """This connection is no stranger any more: it presented the secret, or it is gone."""
        self._server._strangers.pop(self, None)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def _hello_late(self) -> None:
        self._hello_timer = None
        self._server.hello_timeouts += 1
        self._refuse("no HELLO with the cluster secret in time")

    def _refuse(self, message: str) -> None:
        """Close a stranger with a 401 that says why."""
        self._known()
        self._server.rejected += 1
        if self.transport is not None and not self.transport.is_closing():
            self._reject(0, UNAUTHORIZED, message)

    def frame_received(self, kind: int, request_id: int, payload: bytes) -> None:
        server = self._server
        if not self._authenticated:
            if kind == HELLO and server.check_secret(payload):
                self._authenticated = True
                self._known()
                self.max_frame = MAX_FRAME
                self.send(encode_frame(REPLY, request_id, b""))
                return
            server.rejected += 1
            self._reject(request_id)
            return
        if kind == HELLO:
            self.send(encode_frame(REPLY, request_id, b""))
            return
        handler = server._handlers.get(kind)
        deferred = server._deferred.get(kind) if handler is None else None
        if handler is None and deferred is None:
            self._error(request_id, NOT_FOUND, f"unknown request kind {kind}")
            return
        if len(payload) < DEADLINE.size:
            self._error(request_id, FAILED, "request without a deadline")
            return
        (budget,) = DEADLINE.unpack_from(payload)
        if budget and self._waited_ms >= budget:  # deadline.expired, inline
            server.expired += 1
            self._error(request_id, EXPIRED, "deadline expired before the request ran")
            return
        server.served += 1
        _PEER.set(self._peer)
        if deferred is not None:
            try:
                deferred(payload[DEADLINE.size :], self, request_id)
            except Exception as exc:  # a bad request must not kill the connection
                self.send(error_frame(request_id, exc))
            return
        try:
            result = handler(payload[DEADLINE.size :])  # type: ignore[misc]
        except RpcError as exc:
            self._error(request_id, exc.code, exc.message)
            return
        except Exception as exc:  # a bad request must not kill the connection
            self._error(request_id, FAILED, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(result, bytes | bytearray):
            self.send(encode_frame(REPLY, request_id, bytes(result)))
        else:
            # A future (the replica's batched writes) is used as is; a coroutine gets a task.
            future = result if asyncio.isfuture(result) else asyncio.ensure_future(result)
            future.add_done_callback(partial(self._reply_later, request_id))

    def _reply_later(self, request_id: int, future: asyncio.Future) -> None:
        if future.cancelled():
            self._error(request_id, FAILED, "cancelled")
            return
        exc = future.exception()
        if exc is None:
            self.send(encode_frame(REPLY, request_id, future.result()))
        elif isinstance(exc, RpcError):
            self._error(request_id, exc.code, exc.message)
        else:
            self._error(request_id, FAILED, f"{type(exc).__name__}: {exc}")

    def _error(self, request_id: int, code: int, message: str) -> None:
        self.send(encode_frame(ERROR, request_id, error_payload(code, message)))

    def _reject(self, request_id: int, code: int = UNAUTHORIZED, message: str = "") -> None:
        # Written now (not at the end of the loop turn) so the error leaves before the close.
        assert self.transport is not None
        frame = encode_frame(
            ERROR, request_id, error_payload(code, message or "cluster secret required")
        )
        self._out.append(frame)  # after any reply still waiting for this loop turn's flush
        self._flush()
        self.transport.close()

    def frame_too_large(self, request_id: int, length: int) -> None:
        self._server.oversized += 1
        if not self._authenticated:
            self._server.rejected += 1
        self._reject(request_id, TOO_LARGE, f"frame of {length} bytes exceeds {self.max_frame}")


# ---------------------------------------------------------------------------- client


class _ClientProtocol(_FramedProtocol):
    """Matches replies to pending requests; one sweep timer (not one timer per request)
    fails the requests whose time is up.

    A request that times out while nothing at all arrived on the connection since it was sent
    closes the connection: the peer is cut off (or stopped), and the connection may sit in TCP
    retransmission backoff long after the network heals. The next call connects afresh. A peer
    that is merely slow keeps its connection as long as any reply arrives.
    """

    SWEEP_S = 0.05

    def __init__(self) -> None:
        super().__init__()
        # request id -> (future, or None for a request answered through its callback; loop
        # time after which nobody waits for the reply; sent at; that callback, or None)
        self.pending: dict[int, tuple[asyncio.Future | None, float, float, Answer | None]] = {}
        self.closed = False
        self.auth_error: RpcError | None = None
        self._sweeping = False
        self.last_received = self.loop.time()
        self.silent_closes = 0

    def track(
        self,
        request_id: int,
        future: asyncio.Future | None,
        timeout_s: float,
        answer: Answer | None = None,
    ) -> None:
        now = self.loop.time()
        self.pending[request_id] = (future, now + timeout_s, now, answer)
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(self.SWEEP_S, self._sweep)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        super().data_received(data)

    def _sweep(self) -> None:
        now = self.loop.time()
        expired = [rid for rid, (_, due, _, _) in self.pending.items() if due <= now]
        silent = False
        for rid in expired:
            future, _, sent, answer = self.pending.pop(rid)
            silent = silent or sent >= self.last_received
            _fail(future, answer, PeerUnavailable("no reply before the deadline"))
        if silent and not self.closed and self.transport is not None:
            self.silent_closes += 1
            self.closed = True  # callers from now on connect afresh
            self.transport.abort()
        if self.pending and not self.closed:
            self.loop.call_later(self.SWEEP_S, self._sweep)
        else:
            self._sweeping = False

    def frame_received(self, kind: int, request_id: int, payload: bytes) -> None:
        entry = self.pending.pop(request_id, None)
        if kind == ERROR:
            error = decode_error(payload)
            if error.code == UNAUTHORIZED:
                # Every request queued behind a refused HELLO fails with the same 401.
                self.auth_error = error
            if entry is not None:
                _fail(entry[0], entry[3], error)
            return
        if entry is None:
            return
        future, _, _, answer = entry
        if kind != REPLY:
            _fail(future, answer, RpcError(FAILED, f"unexpected frame kind {kind}"))
        elif answer is not None:
            try:  # _answer, inline
                answer(payload, None)
            except Exception:  # the connection's reader must outlive a failing callback
                log.exception("an RPC reply's callback failed")
        elif future is not None and not future.done():
            future.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for future, _, _, answer in pending.values():
            _fail(
                future,
                answer,
                self.auth_error or PeerUnavailable(f"connection lost: {exc or 'closed'}"),
            )


def _answer(answer: Answer, payload: bytes | None, error: BaseException | None) -> None:
    try:
        answer(payload, error)
    except Exception:  # the connection's reader must outlive a failing callback
        log.exception("an RPC reply's callback failed")


def _fail(future: asyncio.Future | None, answer: Answer | None, error: BaseException) -> None:
    if answer is not None:
        _answer(answer, None, error)
    elif future is not None and not future.done():
        future.set_exception(error)


UNTRUSTED_WARNING_EVERY_S = 60.0


class PeerConnection:
    """One persistent, multiplexed connection to a peer's internal port, reconnecting lazily.

    Every call after a lost connection tries to connect again (concurrent callers share one
    attempt): a refused connect costs little, and the failure detector already keeps writes
    and reads away from peers it judges dead.
    """

    def __init__(
        self,
        host: str,
        port: int,
        secret: str | None,
        *,
        connect_timeout_s: float = 1.0,
        tls: TlsMaterial | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._secret = secret.encode() if secret else None
        self._tls = tls
        self._warned_at = -UNTRUSTED_WARNING_EVERY_S
        self._connect_timeout_s = connect_timeout_s
        self._protocol: _ClientProtocol | None = None
        self._connecting: asyncio.Future | None = None
        self._ids = itertools.count(1)

    async def _connect(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        if self._tls is None:
            connecting = loop.create_connection(_ClientProtocol, self.host, self.port)
        else:
            # The contexts of now: a rotated certificate is presented from the next connection.
            connecting = loop.create_connection(
                _ClientProtocol,
                self.host,
                self.port,
                ssl=self._tls.contexts.client,
                server_hostname=self.host,
            )
        try:
            _, protocol = await asyncio.wait_for(connecting, self._connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                self._warn_untrusted(exc)
            raise PeerUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        if self._secret is not None:
            # Pipelined: later requests queue behind the HELLO on the same connection.
            hello = self._start_call(protocol, HELLO, self._secret, self._connect_timeout_s)
            hello.add_done_callback(_consume)
        return protocol

    def _warn_untrusted(self, exc: ssl.SSLCertVerificationError) -> None:
        # A certificate of another CA, or one that does not name this address: a setup error
        # the failure detector alone would only show as a dead peer. Once a minute per peer.
        now = time.monotonic()
        if now - self._warned_at >= UNTRUSTED_WARNING_EVERY_S:
            self._warned_at = now
            log.warning(
                "peer %s:%d presents a certificate this node does not trust: %s",
                self.host,
                self.port,
                exc.verify_message or exc,
            )

    async def _get_protocol(self) -> _ClientProtocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    def _start_call(
        self, protocol: _ClientProtocol, kind: int, payload: bytes, timeout_s: float
    ) -> asyncio.Future:
        request_id = next(self._ids) & 0xFFFFFFFF
        future = protocol.loop.create_future()
        protocol.track(request_id, future, timeout_s)
        if kind == HELLO:
            protocol.send(HEADER.pack(len(payload), kind, request_id) + payload)
        else:
            budget = max(1, int(timeout_s * 1000))  # deadline.budget_ms, inline
            head = REQUEST_HEADER.pack(len(payload) + DEADLINE.size, kind, request_id, budget)
            protocol.send(head + payload)
        return future

    def request(self, kind: int, payload: bytes, timeout_s: float) -> asyncio.Future:
        """Send one request now; the returned future holds the reply or fails with
        PeerUnavailable / RpcError. No coroutine, task or timer of its own on the connected
        path, because the coordinator issues two of these per write."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return asyncio.ensure_future(self._connect_and_call(kind, payload, timeout_s))
        return self._start_call(protocol, kind, payload, timeout_s)

    def request_then(self, kind: int, payload: bytes, timeout_s: float, answer: Answer) -> None:
        """`request` answered through `answer(reply, error)` instead of a future: on the
        connected path no future and no loop hop per request (the coordinator's replica
        writes feed their quorum from here)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            connecting = asyncio.ensure_future(self._connect_and_call(kind, payload, timeout_s))
            connecting.add_done_callback(partial(_forward, answer))
            return
        request_id = next(self._ids) & 0xFFFFFFFF
        # protocol.track and deadline.budget_ms, inline: every replica write comes here.
        now = protocol.loop.time()
        protocol.pending[request_id] = (None, now + timeout_s, now, answer)
        if not protocol._sweeping:
            protocol._sweeping = True
            protocol.loop.call_later(protocol.SWEEP_S, protocol._sweep)
        budget = max(1, int(timeout_s * 1000))
        head = REQUEST_HEADER.pack(len(payload) + DEADLINE.size, kind, request_id, budget)
        protocol.send(head + payload)

    async def _connect_and_call(self, kind: int, payload: bytes, timeout_s: float) -> bytes:
        await self._get_protocol()
        return await self.request(kind, payload, timeout_s)

    async def call(self, kind: int, payload: bytes, timeout_s: float) -> bytes:
        """Send one request and wait for its reply for at most `timeout_s`."""
        return await self.request(kind, payload, timeout_s)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _forward(answer: Answer, future: asyncio.Future) -> None:
    if future.cancelled():
        _answer(answer, None, PeerUnavailable("cancelled"))
    elif future.exception() is not None:
        _answer(answer, None, future.exception())
    else:
        _answer(answer, future.result(), None)


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class RpcClient:
    """Connections to every peer, keyed by internal address."""

    def __init__(self, secret: str | None = None, tls: TlsMaterial | None = None) -> None:
        self._secret = secret
        # Peers are dialled with TLS when this node's internal port takes TLS (on or required).
        self._tls = tls if tls is not None and tls.serves("internal") else None
        self._peers: dict[tuple[str, int], PeerConnection] = {}

    def peer(self, host: str, port: int) -> PeerConnection:
        key = (host, port)
        connection = self._peers.get(key)
        if connection is None:
            connection = self._peers[key] = PeerConnection(host, port, self._secret, tls=self._tls)
        return connection

    async def call(
        self, host: str, port: int, kind: int, payload: bytes, timeout_s: float
    ) -> bytes:
        return await self.peer(host, port).call(kind, payload, timeout_s)

    def close(self) -> None:
        for connection in self._peers.values():
            connection.close()
        self._peers.clear()
