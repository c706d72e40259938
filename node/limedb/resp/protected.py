"""Protected mode, as Redis has it: without a password (or users required), answer loopback
clients only.

A node without a RESP password that listens beyond the loopback interface would otherwise serve
(and let overwrite) every key to anyone who reaches the port. Like Redis, it then tells a
non-loopback client why it is refused and how to fix it, and closes the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress

DENIED = (
    b"-DENIED LimeDB is running in protected mode because protected mode is enabled and no "
    b"RESP password is set. In this mode connections are only accepted from the loopback "
    b"interface. If you want to connect from external computers you may adopt one of the "
    b"following solutions: 1) Set a password: restart the node with --resp-password or "
    b"LIMEDB_RESP_PASSWORD (clients then AUTH with it; the cluster secret is not the RESP "
    b"password). 2) Only if the RESP port is not reachable from untrusted networks, disable "
    b"protected mode: restart the node with LIMEDB_RESP_PROTECTED_MODE=false. 3) Bind the "
    b"node to the loopback interface only (--host 127.0.0.1). NOTE: You only need to do one "
    b"of the above things in order for the node to start accepting connections from the "
    b"outside.\r\n"
)


def is_loopback(host: str) -> bool:
    """Whether a peer address is on the loopback interface (a Unix socket has no address)."""
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def denies(protected_mode: bool, credentials_required: bool, peer_host: str) -> bool:
    """Whether to refuse a peer: protected mode, no credentials asked of clients (neither a
    RESP password nor auth_mode=required), and not on the loopback interface."""
    return protected_mode and not credentials_required and not is_loopback(peer_host)


# How long a refused client may keep sending before the connection is closed anyway.
LINGER_S = 1.0


def refuse(transport: asyncio.Transport) -> None:
    """Send DENIED and end the connection without losing the message: a client that already
    sent a command would get a TCP reset (and lose the reply) if we closed with its bytes
    unread, so we half-close, keep draining (and ignoring) for a moment, then close."""
    transport.write(DENIED)
    if not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER_S, transport.close)
