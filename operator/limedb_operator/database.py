"""The operator's only door to LimeDB: admin status, join and leave through `limedb.client`.

Contract (limedb.client.Client, node/limedb/api/admin.py): `admin_status()` -> {"epoch",
"members": [{"node_id", "url", "state"}], "replication_factor", "transition": None | {"kind",
"change", "phase", "ranges_moved", "ranges_total", ...}}; `join(node_url)` adds a node started
with --await-join; `leave(node)` starts a member's hand-off; `set_replication_factor(rf)`.
Each call goes to one node by pod IP; that node proposes the change and the ring drives it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from limedb_operator.scaling import RingView, freshest, ring_view_from_status

log = logging.getLogger(__name__)


STATUS_TIMEOUT_S = 5.0  # a hung node must not stall the reconcile loop
CHANGE_TIMEOUT_S = 30.0  # a join waits (up to 15 s) for the new node to appear in gossip


def _client(url: str, secret: str | None, timeout: float = CHANGE_TIMEOUT_S) -> Any:
    from limedb.client import Client  # the node package; imported late so tests stay pure

    return Client(url, cluster_secret=secret, timeout=timeout)


def read_ring(urls: Sequence[str], secret: str | None, ask: int = 3) -> RingView | None:
    """Ask up to `ask` nodes (lowest ordinals first) and keep the freshest ring they report."""
    views = []
    for url in list(urls)[:ask]:
        try:
            client = _client(url, secret, STATUS_TIMEOUT_S)
            try:
                views.append(ring_view_from_status(client.admin_status()))
            finally:
                close = getattr(client, "close", None)
                if close:
                    close()
        except Exception as e:  # any node may be restarting; others answer
            log.info("admin status from %s failed: %s", url, e)
    return freshest(views)


def join(coordinator_url: str, node_url: str, secret: str | None) -> None:
    client = _client(coordinator_url, secret)
    try:
        client.join(node_url)
    finally:
        close = getattr(client, "close", None)
        if close:
            close()


def leave(coordinator_url: str, node_id: str, secret: str | None) -> None:
    client = _client(coordinator_url, secret)
    try:
        client.leave(node_id)
    finally:
        close = getattr(client, "close", None)
        if close:
            close()


def set_replication_factor(coordinator_url: str, rf: int, secret: str | None) -> None:
    client = _client(coordinator_url, secret)
    try:
        client.set_replication_factor(rf)
    finally:
        close = getattr(client, "close", None)
        if close:
            close()


# Backups (docs/backup.md): the node asked coordinates the backup or restore; its
# `GET /admin/backup/status` follows it ({"current", "last"}: jobs with id, phase, progress).


class StartRefused(Exception):
    """The node would not start a backup or restore: `code` is its HTTP status (409 refused,
    404 no such backup, 502 the object store failed, 400 a bad location)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _start(url: str, secret: str | None, call: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    from limedb.client import BadRequest, Refused

    client = _client(url, secret)
    try:
        return getattr(client, call)(*args, **kwargs)["job"]
    except Refused as e:
        raise StartRefused(409, str(e)) from e
    except BadRequest as e:
        raise StartRefused(e.status, str(e)) from e
    finally:
        client.close()


def start_backup(
    url: str, secret: str | None, to: str, endpoint: str | None, region: str | None,
    credentials: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Ask the node at `url` to back the cluster up to `to`; its job ({"id", "backup_id", ...})."""
    return _start(url, secret, "backup_create", to, endpoint=endpoint, region=region,
                  credentials=credentials or None)  # fmt: skip


def start_restore(
    url: str, secret: str | None, source: str, backup: str | None, endpoint: str | None,
    region: str | None, credentials: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Ask the node at `url` to restore backup `backup` (None: the newest) of `source`."""
    return _start(url, secret, "backup_restore", source, backup=backup, endpoint=endpoint,
                  region=region, credentials=credentials or None)  # fmt: skip


def backup_status(url: str, secret: str | None) -> dict[str, Any] | None:
    """The node's running and last backup or restore, None when it does not answer."""
    try:
        client = _client(url, secret, STATUS_TIMEOUT_S)
        try:
            return client.backup_status()
        finally:
            client.close()
    except Exception as e:  # restarting, or gone: the caller decides what that means
        log.info("backup status from %s failed: %s", url, e)
        return None
