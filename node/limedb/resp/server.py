"""The RESP listener: an asyncio protocol that parses with hiredis and serves pipelines in order.

Every connection executes its commands strictly one after another (a pipeline sees its own
writes) and answers in order. A command whose service call completes without waiting (a local
read, a write under periodic durability) is run to completion inline, without an asyncio task;
only a command that really waits (a replica round trip, an fsync) moves the rest of the
connection's queue onto a task. Replies of one batch of input go out in one write.

Limits: `max_clients` connections, within the node's descriptor budget shared with HTTP (more
get Redis's "max number of clients reached"), requests larger than `max_bulk_bytes` (a protocol
error, then the connection closes, as Redis does), `max_buffered_bytes` of requests held for
all clients together (partial requests and queued ones; the client whose input would pass it
gets an error and is closed), `idle_timeout_s` (0 = never, Redis's `timeout`), and reading
pauses while a client has more than `max_pipeline` commands queued or has left 64 MiB of
replies unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import types
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, fields
from typing import Any

import hiredis

from limedb.auth import Authenticator
from limedb.cluster.atomic import OperationRefused
from limedb.cluster.service import (
    DescriptorsExhausted,
    InsufficientStorage,
    InvalidRequest,
    NodeService,
    ServiceError,
    Unavailable,
)
from limedb.config import default
from limedb.connections import ConnectionBudget, out_of_descriptors
from limedb.resp import admin, keyspace, transaction  # noqa: F401 - importing registers the commands
from limedb.resp.command_stats import CommandStats
from limedb.resp.commands import resolve
from limedb.resp.cursors import ScanCursors
from limedb.resp.encoding import RespError, encode_reply
from limedb.resp.protected import denies, refuse
from limedb.resp.session import Session
from limedb.tasks import cancel_and_wait
from limedb.tls import TlsMaterial
from limedb.tls_listener import SniffingListener, listen

log = logging.getLogger("limedb.resp")

MIB = 1024 * 1024
INLINE_MAX = 64 * 1024
OUTPUT_HIGH_WATER = 64 * MIB
_FLUSH_EVERY = 256
# Most commands of one pipeline started together (see RespConnection._batch_after).
_BATCH_MAX = 256
# Single-key data commands: on distinct keys they are independent of each other.
_BATCHABLE = frozenset(
    name.encode()
    for name in [
        "get",
        "set",
        "setex",
        "psetex",
        "setnx",
        "getset",
        "getdel",
        "incr",
        "decr",
        "incrby",
        "decrby",
        "append",
        "strlen",
        "ttl",
        "pttl",
        "type",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "persist",
    ]
)


def _plain_set(request: list[bytes]) -> bool:
    """SET key value without options: a blind write, stamped when it starts."""
    return len(request) == 3 and request[0].lower() == b"set"


def batch_key(request: Any, session: Session) -> bytes | None:
    """The key of a request that may run concurrently with others on other keys, else None."""
    if type(request) is not list or len(request) < 2 or session.multi is not None:
        return None
    name = request[0]
    if type(name) is not bytes or name.lower() not in _BATCHABLE:
        return None
    key = request[1]
    return key if type(key) is bytes else None


_COROUTINE = types.CoroutineType


@dataclass(frozen=True)
class Limits:
    """The listener's settings (from limedb.config, whose defaults match Redis where it has
    one; a Limits made without a Config gets the same defaults)."""

    host: str = "0.0.0.0"
    max_clients: int = default("resp_max_clients")
    max_bulk_bytes: int = default("resp_max_bulk_bytes")
    max_buffered_bytes: int = default("resp_max_buffered_bytes")
    idle_timeout_s: int = default("resp_idle_timeout_s")
    max_pipeline: int = 4096
    password: str | None = default("resp_password")
    # auth_mode=required: a client must AUTH (as a user, or with the password) before commands.
    auth_required: bool = False
    protected_mode: bool = default("resp_protected_mode")
    max_key_bytes: int = default("max_key_bytes")
    max_value_bytes: int = default("max_value_bytes")
    durability: str = default("durability")

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(
            host=config.host,
            max_clients=config.resp_max_clients,
            max_bulk_bytes=config.resp_max_bulk_bytes,
            max_buffered_bytes=config.resp_max_buffered_bytes,
            idle_timeout_s=config.resp_idle_timeout_s,
            password=config.resp_password,
            auth_required=config.auth_mode == "required",
            protected_mode=config.resp_protected_mode,
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            durability=config.durability,
        )


@dataclass
class Stats:
    total_connections_received: int = 0
    total_commands_processed: int = 0
    rejected_connections: int = 0
    keyspace_hits: int = 0
    keyspace_misses: int = 0
    total_error_replies: int = 0
    protocol_errors: int = 0
    idle_disconnections: int = 0
    unavailable_errors: int = 0
    protected_mode_denials: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def error_reply(exc: BaseException) -> RespError:
    """The Redis error line for an exception raised while serving a command."""
    if isinstance(exc, RespError):
        return exc
    if isinstance(exc, OperationRefused):
        return RespError(str(exc))
    if isinstance(exc, Unavailable):
        return RespError(f"UNAVAILABLE {exc}")
    if isinstance(exc, InsufficientStorage):
        # Redis's own "-MISCONF" means a failed RDB save; a full disk gets its own prefix.
        return RespError(f"NOSPACE {exc}")
    if isinstance(exc, InvalidRequest | ServiceError):
        return RespError(f"ERR {exc}")
    log.error("RESP command failed", exc_info=exc)
    return RespError(f"ERR internal error: {type(exc).__name__}: {exc}")


# A command that has to wait: its coroutine, what it waits on, its name and start time.
Waiting = tuple[Coroutine, Any, str, float]


class _Fatal:
    """Queued after the last good command of a stream that cannot be parsed any further."""

    __slots__ = ("line",)

    def __init__(self, line: str) -> None:
        self.line = line


class RespConnection(asyncio.Protocol):
    """One client: parse, queue, execute in order, reply in order."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.reader = hiredis.Reader()
        self.queue: deque[Any] = deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.task: asyncio.Task | None = None
        self.inline = b""
        self.multibulk = False
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.counted = False  # holds a place in the connection budget
        # Input held, for the node-wide cap: `partial` bytes of a request still arriving, and
        # per read that completed requests, [requests of it still queued, bytes it brought].
        self.partial = 0
        self.batches: deque[list[int]] = deque()

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        # A pipelining client may send everything before it reads a reply (redis-py does):
        # replies must be able to pile up far beyond asyncio's 64 KiB default, or both sides
        # would wait for each other. Like Redis, hold them; stop only at a generous bound.
        transport.set_write_buffer_limits(high=OUTPUT_HIGH_WATER)
        server = self.server
        server.stats.total_connections_received += 1
        if not server.budget.try_open("resp", server.limits.max_clients):
            server.stats.rejected_connections += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self.closed = True
            return
        self.counted = True
        peer = transport.get_extra_info("peername") or ("?", 0)
        limits = server.limits
        required = limits.password is not None or limits.auth_required
        if denies(limits.protected_mode, required, peer[0]):
            server.stats.protected_mode_denials += 1
            self.closed = True  # what the client sends from now on is read and ignored
            refuse(transport)
            return
        local = transport.get_extra_info("sockname") or ("?", 0)
        self.session = Session(
            id=next(server.ids),
            server=server,
            addr=f"{peer[0]}:{peer[1]}",
            laddr=f"{local[0]}:{local[1]}",
            authenticated=limits.password is None and not limits.auth_required,
        )
        server.sessions[self.session.id] = self.session
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_queue()
        self._hold(-self.partial)
        self.partial = 0
        if self.counted:
            self.counted = False
            self.server.budget.release("resp")
        if self.session is not None:
            self.server.sessions.pop(self.session.id, None)
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None and self.session is not None:
            self.process()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.session is None:
            return
        self.session.last_active = time.monotonic()
        reader = self.reader
        queue = self.queue
        received, queued = len(data), len(queue)
        if not self.multibulk:
            data = self._inline_requests(data)
        if data:
            reader.feed(data)
            try:
                request = reader.gets()
                while request is not False:
                    queue.append(request)
                    request = reader.gets()
            except hiredis.ProtocolError as exc:
                queue.append(_Fatal(f"ERR Protocol error: {exc}"))
            else:
                if reader.len() > self.server.limits.max_bulk_bytes:
                    queue.append(_Fatal("ERR Protocol error: invalid bulk length"))
        if not self._account(received, len(queue) - queued):
            return
        if self.task is None:
            self.process()
        else:  # a command is waiting: the queue only grows until it is done
            self._backpressure()

    def _account(self, received: int, requests: int) -> bool:
        """Count the input of one read against the node-wide cap; False if this client was
        refused (answered and closed) because the cap is reached."""
        partial = self.reader.len() + len(self.inline)
        completed = received + self.partial - partial
        change = partial - self.partial
        if requests:
            # (hiredis keeps up to 1 KiB of parsed input before discarding it: never below 0.)
            self.batches.append([requests, max(0, completed)])
            change += max(0, completed)
        self.partial = partial
        self._hold(change)
        server = self.server
        if change <= 0 or server.budget.resp_buffered_bytes <= server.limits.max_buffered_bytes:
            return True
        server.budget.resp_buffer_refusals += 1
        log.warning(
            "RESP client %s disconnected: requests buffered for all clients would pass "
            "resp_max_buffered_bytes (%d)",
            self.session.addr if self.session is not None else "?",
            server.limits.max_buffered_bytes,
        )
        self._flush()
        if self.transport is not None:
            self.transport.write(
                b"-ERR max buffered request bytes of all clients reached "
                b"(resp_max_buffered_bytes); retry later\r\n"
            )
            self.transport.close()
        self.closed = True
        self._drop_queue()
        return False

    def _hold(self, change: int) -> None:
        self.server.budget.resp_buffered_bytes += change

    def _done_with_request(self) -> None:
        """The oldest queued request was taken off the queue: release its read's bytes once
        every request of that read was."""
        batch = self.batches[0]
        batch[0] -= 1
        if not batch[0]:
            self.batches.popleft()
            self._hold(-batch[1])

    def _drop_queue(self) -> None:
        self.queue.clear()
        while self.batches:
            self._hold(-self.batches.popleft()[1])

    def _inline_requests(self, data: bytes) -> bytes:
        """Redis's inline form (`PING\\r\\n`, as typed into telnet); returns what follows.

        A connection is read inline until its first `*` request; from then on everything goes
        to hiredis, which alone knows where a request split across reads continues."""
        buf = self.inline + data
        self.inline = b""
        while buf:
            if buf[:1] == b"*":
                self.multibulk = True
                return buf
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > INLINE_MAX:
                    self.queue.append(_Fatal("ERR Protocol error: too big inline request"))
                    return b""
                self.inline = buf
                return b""
            words = buf[:end].rstrip(b"\r").split()
            buf = buf[end + 1 :]
            if words:
                self.queue.append(words)
        return buf

    # ------------------------------------------------------------------ execution

    def process(self) -> None:
        """Run queued commands until one has to wait, the queue is empty, or output backs up."""
        queue, out, session = self.queue, self.out, self.session
        assert session is not None
        while queue and not self.write_paused and not session.closing and not self.closed:
            request = queue.popleft()
            self._done_with_request()
            reply = self.execute(request)
            if reply is None:
                continue
            if type(reply) is not bytes:
                slots = [reply, *self._batch_after(request)]
                self.task = asyncio.get_running_loop().create_task(self._wait(slots))
                self._flush()
                return
            out.append(reply)
            if len(out) >= _FLUSH_EVERY:
                self._flush()
        self._flush()
        if session.closing and self.transport is not None:
            self.transport.close()
            return
        self._backpressure()

    def _backpressure(self) -> None:
        """Stop reading from a client that is far ahead of us; resume once it is not."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if len(self.queue) > self.server.limits.max_pipeline or self.write_paused:
            if not self.read_paused:
                self.read_paused = True
                transport.pause_reading()
        elif self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def execute(self, request: Any) -> bytes | Waiting | None:
        """Encoded reply bytes, or (coroutine, what it waits on) when it has to wait."""
        session = self.session
        assert session is not None
        if type(request) is not list:
            return self._fatal(request)
        if not request:
            return None
        for word in request:
            if type(word) is not bytes:
                return self._fatal(_Fatal("ERR Protocol error: expected '$', got something else"))
        cmd = resolve(request, session.authenticated, session.role, session.user)
        stats = self.server.stats
        if isinstance(cmd, RespError):
            stats.total_error_replies += 1
            if session.multi is not None:
                session.multi_dirty = True  # EXEC answers EXECABORT, as Redis does
            return encode_reply(cmd, session.proto)
        if session.multi is not None and request[0].lower() not in transaction.CONTROL:
            return encode_reply(transaction.queue(session, request), session.proto)
        stats.total_commands_processed += 1
        session.last_command = request[0]
        started = time.perf_counter()
        try:
            result = cmd.handler(session, request)
            if type(result) is _COROUTINE:
                try:
                    waiting = result.send(None)
                except StopIteration as done:
                    result = done.value
                else:
                    return result, waiting, cmd.name, started
        except Exception as exc:  # every failure of a command becomes its error reply
            result = self._error(exc)
        self.server.commands.observe(
            cmd.name, time.perf_counter() - started, isinstance(result, RespError)
        )
        return encode_reply(result, session.proto)

    def _error(self, exc: Exception) -> RespError:
        stats = self.server.stats
        stats.total_error_replies += 1
        if out_of_descriptors(exc):
            assert isinstance(exc, OSError)
            stats.unavailable_errors += 1
            return RespError(f"UNAVAILABLE {self.server.budget.exhausted(exc)}")
        if isinstance(exc, Unavailable):
            stats.unavailable_errors += 1
            if isinstance(exc, DescriptorsExhausted):
                self.server.budget.exhausted(exc)
        return error_reply(exc)

    def _fatal(self, request: Any) -> None:
        line = request.line if isinstance(request, _Fatal) else "ERR Protocol error: expected '*'"
        self.server.stats.protocol_errors += 1
        self.out.append(b"-%s\r\n" % line.encode())
        self._drop_queue()
        assert self.session is not None
        self.session.closing = True
        return None

    def _batch_after(self, request: list[bytes]) -> list[bytes | Waiting]:
        """Start the queued commands that follow a waiting one while they are independent of
        it and of each other (single-key data commands on distinct keys, outside MULTI), so
        that a pipeline's writes wait for replication and fsync together, not one after the
        other. Plain SETs of one key also start together: each is stamped when it starts, in
        order, so the last one still wins. Replies go out in order."""
        session = self.session
        assert session is not None
        key = batch_key(request, session)
        if key is None:
            return []
        # Each key of the batch, and whether every command on it so far is a plain SET.
        keys = {key: _plain_set(request)}
        started: list[bytes | Waiting] = []
        queue = self.queue
        while queue and len(started) < _BATCH_MAX:
            following = queue[0]
            key = batch_key(following, session)
            if key is None:
                break
            plain = _plain_set(following)
            if key in keys and not (plain and keys[key]):
                break
            keys[key] = plain
            queue.popleft()
            self._done_with_request()
            reply = self.execute(following)
            if reply is None:
                break
            started.append(reply)
        return started

    async def _wait(self, slots: list[bytes | Waiting]) -> None:
        """Finish the commands that had to wait, in order, appending every reply in order,
        then go on with the queue. Every command of a batch has already started, so what each
        waits on (a group commit, replica answers) is in flight at once; finishing them in
        order costs no task per command."""
        session = self.session
        assert session is not None
        for slot in slots:
            if type(slot) is bytes:
                self.out.append(slot)
                continue
            coro, waiting, name, started = slot
            try:
                result = await self._drive(coro, waiting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                result = self._error(exc)
            self.server.commands.observe(
                name, time.perf_counter() - started, isinstance(result, RespError)
            )
            self.out.append(encode_reply(result, session.proto))
        self.task = None
        if not self.closed:
            self.process()

    async def _drive(self, coro: Coroutine, waiting: Any) -> Any:
        """Run a command's coroutine that yielded `waiting` to completion, as a Task would."""
        try:
            while True:
                if waiting is None:
                    await asyncio.sleep(0)
                else:
                    # What a Task does with a yielded future: clear its "blocking" mark (else
                    # awaiting it again is refused), then wake up when it is done.
                    waiting._asyncio_future_blocking = False
                    try:
                        await waiting
                    except asyncio.CancelledError:
                        if not waiting.cancelled():
                            coro.close()
                            raise
                    except Exception:  # noqa: S110 - the coroutine sees it when resumed
                        pass
                waiting = coro.send(None)
        except StopIteration as done:
            return done.value

    def _flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def idle_for(self, now: float) -> float:
        if self.session is None or self.task is not None or self.queue:
            return 0.0
        return now - self.session.last_active

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RespServer:
    """The listener of one node: sessions, statistics, SCAN cursors, and the service."""

    def __init__(
        self,
        service: NodeService,
        limits: Limits | None = None,
        budget: ConnectionBudget | None = None,
        tls: TlsMaterial | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.service = service
        # With TLS (limedb.tls): TLS clients, and plaintext ones too in tls_mode `on`.
        self.tls = tls
        # Checks AUTH user pass against the cluster's users (limedb.auth); None: no users.
        self.auth = auth
        self.limits = limits or Limits()
        # The node's budget of client connections, shared with its HTTP listener.
        self.budget = budget if budget is not None else ConnectionBudget(reserve=0)
        self.stats = Stats()
        self.commands = CommandStats()  # in /metrics (limedb.resp.command_stats)
        self.sessions: dict[int, Session] = {}
        self.connections: set[RespConnection] = set()
        self.cursors = ScanCursors()
        self.ids = itertools.count(1)
        self.started_at = time.monotonic()
        self._server: asyncio.base_events.Server | SniffingListener | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await listen(
            lambda: RespConnection(self), host, port, backlog=1024, tls=self.tls, listener="resp"
        )
        if self.limits.idle_timeout_s > 0:
            self._sweeper = asyncio.create_task(self._close_idle(), name="resp-idle-sweeper")
        log.info("RESP listener on %s:%d", host, self.port)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return self._server.sockets[0].getsockname()[1]

    async def _close_idle(self) -> None:
        timeout = self.limits.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 2))
            now = time.monotonic()
            for connection in list(self.connections):
                if connection.idle_for(now) > timeout:
                    self.stats.idle_disconnections += 1
                    self.budget.closed["resp_idle"] += 1
                    connection.close()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let commands in flight finish (up to `timeout_s`), close clients."""
        await cancel_and_wait(self._sweeper)
        if self._server is not None:
            self._server.close()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout_s)
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout_s)
            self._server = None
