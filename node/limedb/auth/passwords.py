"""Password hashes: scrypt from the standard library (OpenSSL's), salted, parameters stored.

scrypt is memory-hard (n * r * 128 bytes per hash: 32 MiB with the defaults below), so a
stolen hash costs an attacker memory as well as time per guess. Each hash records its own
parameters, so they can be raised later without invalidating stored passwords. Hashing takes
tens of milliseconds on purpose: callers run it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

# OWASP's password storage guidance lists scrypt N=2^17, r=8, p=1 as its first choice and
# equivalent lower-memory settings; N=2^15, r=8, p=1 (32 MiB, ~0.1 s) is its low-memory one.
N, R, P = 2**15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash and the parameters it was made with."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def encode(self) -> str:
        """`scrypt$n$r$p$salt$digest` (base64), the form stored in a user record."""
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    @classmethod
    def decode(cls, text: str) -> PasswordHash:
        scheme, n, r, p, salt, digest = text.split("$")
        if scheme != "scrypt":
            raise ValueError(f"unknown password scheme {scheme!r}")
        return cls(int(n), int(r), int(p), base64.b64decode(salt), base64.b64decode(digest))


def check_password(password: str) -> bytes:
    """The password's bytes; ValueError when it is too short or too long to accept."""
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password may have at most {MAX_PASSWORD_BYTES} bytes")
    return raw


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p, dklen=KEY_BYTES
    )


def hash_password(password: bytes) -> PasswordHash:
    """A new salted hash of `password` (blocking: tens of milliseconds)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(N, R, P, salt, _scrypt(password, salt, N, R, P))


def verify(password: bytes, stored: PasswordHash) -> bool:
    """Whether `password` matches `stored` (blocking, constant-time comparison)."""
    if len(password) > MAX_PASSWORD_BYTES:
        return False
    candidate = _scrypt(password, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(candidate, stored.digest)
