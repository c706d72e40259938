"""The cluster secret a node runs with: configured, kept in a data directory, or refused.

A cluster member (seeds naming another node, or `await_join`) needs the secret every member
shares, so it only starts with one configured, or with an explicit `insecure`. A single node has
no peers to agree with: it generates its own secret on first start and keeps it in its data
directory, so its admin routes are never open by default. The CLI finds the same file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from limedb.config import Config

SECRET_FILE = "cluster-secret"
# Where `limedb admin` looks when no secret is given: `limedb cluster up` (and `make run`),
# then a single `limedb serve`, both with their default data directories.
DEFAULT_SECRET_FILES = (Path("data") / SECRET_FILE, Path("limedb-data") / SECRET_FILE)

INSECURE_WARNING = (
    "INSECURE: this node runs without a cluster secret (--insecure / LIMEDB_INSECURE): anyone "
    "who reaches its ports can change the ring, read every key through /admin and write "
    "through the internal port. Set LIMEDB_CLUSTER_SECRET on every member instead."
)


class SecretRequired(Exception):
    """A cluster member was started with neither a cluster secret nor `insecure`."""


def is_cluster_member(config: Config) -> bool:
    """Whether the node has peers (or waits to be joined), as `server.build_service` decides."""
    return config.await_join or any(seed != config.advertise_url for seed in config.seeds)


def load_or_create(path: Path) -> str:
    """The secret kept in `path`, generated (readable by its owner only) if the file is new."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
        file.flush()
        os.fsync(file.fileno())
    return token


def resolve(config: Config) -> Config:
    """`config` with the secret the node runs with; SecretRequired names the way out."""
    if config.cluster_secret or config.insecure:
        return config
    if is_cluster_member(config):
        raise SecretRequired(
            "a cluster member (--seeds or --await-join) needs the cluster secret every member "
            "shares: set LIMEDB_CLUSTER_SECRET (for instance to the output of `openssl rand "
            "-hex 32`), or start with --insecure (LIMEDB_INSECURE=true) to run with internal "
            "and admin routes open to anyone who can reach them"
        )
    secret = load_or_create(Path(config.data_dir) / SECRET_FILE)
    return config.replace(cluster_secret=secret)


def find_secret(candidates: Iterable[Path] = DEFAULT_SECRET_FILES) -> str | None:
    """The first secret file that exists among `candidates` (relative to the working dir)."""
    for path in candidates:
        try:
            return path.read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return None


def node_proof(secret: str, challenge: str, node_id: str, url: str) -> str:
    """What a node answers to a join's challenge: it holds the secret and is this node and URL,
    without the secret ever being sent to an address that has not proved itself."""
    message = f"limedb-node-proof\n{challenge}\n{node_id}\n{url}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(secret: str, challenge: str, node_id: str, url: str, proof: object) -> bool:
    expected = node_proof(secret, challenge, node_id, url)
    return isinstance(proof, str) and hmac.compare_digest(proof.encode(), expected.encode())
