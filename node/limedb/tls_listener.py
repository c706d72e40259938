"""A listening socket whose connections speak TLS or plaintext, told apart by their first byte.

Every TLS connection opens with a handshake record, whose first byte is 0x16; no HTTP request
line, RESP command or RPC frame header of LimeDB starts with it (a RESP command starts with
`*` or a letter, an HTTP request with a method, an RPC frame with the high byte of a length
that is at most 64 MiB). So one port serves both in `tls_mode on`, and in `required` a
plaintext client is closed before a byte of it is parsed. The first byte is peeked
(MSG_PEEK), never consumed, and the socket is handed to the event loop as a TLS or a plain
connection with the protocol the listener was made for (uvicorn's, RESP's, RPC's).

The context is asked for at every accept, so a rotated certificate (limedb.tls) serves every
handshake that starts after the reload.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limedb.tls import TlsMaterial

log = logging.getLogger("limedb.tls")

TLS_HANDSHAKE = 0x16
ACCEPTS_PER_WAKEUP = 64
RETRY_ACCEPT_S = 0.1  # after EMFILE/ENFILE: try again later instead of spinning on the listener
ACCEPT_WARNING_EVERY_S = 10.0  # ... and say so in the log at most this often
# How long a close waits for the client's close_notify. An idle keep-alive client answers only
# when it next uses the connection, so a long wait held every graceful shutdown for its length.
SHUTDOWN_TIMEOUT_S = 1.0
# Connections not yet handed to their protocol (waiting for a first byte or in the handshake)
# hold a descriptor each but count in no connection budget yet; beyond this many, a new one is
# closed at once, so a flood of silent connections cannot take every descriptor of the node.
MAX_PENDING = 1024


class SniffingListener:
    """Serves `factory`'s protocol on (host, port); TLS with `context()`, plaintext only when
    `plaintext` is true. Quacks like asyncio's Server where uvicorn and the node use it
    (`sockets`, `close`, `wait_closed`)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        context: Callable[[], ssl.SSLContext],
        *,
        plaintext: bool,
        first_byte_timeout_s: float = 10.0,
        handshake_timeout_s: float = 10.0,
        max_pending: int = MAX_PENDING,
        name: str = "",
    ) -> None:
        self._factory = factory
        self._context = context
        self.plaintext = plaintext
        self._first_byte_timeout_s = first_byte_timeout_s
        self._handshake_timeout_s = handshake_timeout_s
        self._max_pending = max_pending
        self.name = name
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sniffing: dict[socket.socket, asyncio.TimerHandle] = {}
        self._handshakes: set[asyncio.Future] = set()
        self.sockets: list[socket.socket] = []
        self.tls_connections = 0
        self.plain_connections = 0
        self.plain_refused = 0
        self.handshake_failures = 0
        self.pending_refused = 0
        self.accept_failures = 0  # accept() out of descriptors (EMFILE, ENFILE) or memory
        self._accept_warned_at = -ACCEPT_WARNING_EVERY_S

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        sock.setblocking(False)
        self._sock = sock
        self.sockets = [sock]
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1] if self.sockets else 0

    def _accept(self) -> None:
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.accept_failures += 1
                    now = self._loop.time()
                    if now - self._accept_warned_at >= ACCEPT_WARNING_EVERY_S:
                        self._accept_warned_at = now
                        log.warning("%s listener cannot accept: %s; retrying", self.name, exc)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(RETRY_ACCEPT_S, self._resume_accept)
                return
            if len(self._sniffing) + len(self._handshakes) >= self._max_pending:
                self.pending_refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            timer = self._loop.call_later(self._first_byte_timeout_s, self._drop, conn)
            self._sniffing[conn] = timer
            self._loop.add_reader(conn.fileno(), self._sniff, conn)

    def _resume_accept(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _forget(self, conn: socket.socket) -> bool:
        timer = self._sniffing.pop(conn, None)
        if timer is None:
            return False
        timer.cancel()
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())
        return True

    def _drop(self, conn: socket.socket) -> None:
        if self._forget(conn):
            conn.close()

    def _sniff(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if not self._forget(conn):
            return
        if not first:
            conn.close()
            return
        if first[0] == TLS_HANDSHAKE:
            self.tls_connections += 1
            context: ssl.SSLContext | None = self._context()
        elif self.plaintext:
            self.plain_connections += 1
            context = None
        else:
            self.plain_refused += 1
            conn.close()
            return
        self._hand_over(conn, context)

    def _hand_over(self, conn: socket.socket, context: ssl.SSLContext | None) -> None:
        assert self._loop is not None
        if context is None:
            opening = self._loop.connect_accepted_socket(self._factory, conn)
        else:
            opening = self._loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=context,
                ssl_handshake_timeout=self._handshake_timeout_s,
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            )
        future = asyncio.ensure_future(opening)
        self._handshakes.add(future)
        future.add_done_callback(self._opened)

    def _opened(self, future: asyncio.Future) -> None:
        self._handshakes.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            # A client without the CA, a peer whose certificate another CA signed, a scanner.
            self.handshake_failures += 1
            log.debug("%s TLS handshake failed: %s", self.name, exc)

    def close(self) -> None:
        """Stop accepting; connections not yet handed over are closed."""
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None
        for conn in list(self._sniffing):
            self._drop(conn)

    async def wait_closed(self) -> None:
        """Wait for the handshakes under way (each is bounded by its timeout)."""
        if self._handshakes:
            await asyncio.wait(list(self._handshakes))


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    backlog: int,
    tls: TlsMaterial | None,
    listener: str,
) -> asyncio.base_events.Server | SniffingListener:
    """`factory`'s protocol served on (host, port) for `listener` ("resp", "internal"): behind a
    SniffingListener registered in `tls.listeners` when TLS serves that listener, else on
    asyncio's plain server."""
    if tls is None or not tls.serves(listener):
        loop = asyncio.get_running_loop()
        return await loop.create_server(factory, host, port, reuse_address=True, backlog=backlog)
    sniffing = SniffingListener(
        factory,
        lambda: tls.server_context(listener),
        plaintext=tls.takes_plaintext(listener),
        name="RPC" if listener == "internal" else listener.upper(),
    )
    tls.listeners[listener] = sniffing
    await sniffing.start(host, port, backlog=backlog)
    return sniffing
