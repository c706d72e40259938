"""Raw RESP exchanges for tests: send bytes on a fresh socket, read what comes back."""

from __future__ import annotations

import socket


def exchange(
    host: str, port: int, payload: bytes, *, expect_close: bool = False, quiet_s: float = 0.3
) -> bytes:
    """Send `payload` (from the calling thread's network namespace) and read until the server
    closes the connection or, unless `expect_close`, stays quiet `quiet_s` after answering."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return data
            if not chunk:
                return data
            data += chunk
            if not expect_close:
                sock.settimeout(quiet_s)
