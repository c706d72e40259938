"""The operator's only door to LimeDB: admin status, join and leave through `limedb.client`.

Contract (the transitions issue implements it in limedb.client.Client):
`admin_status()` -> {"epoch": int, "members": [{"node_id", "state"}], "transition": None |
{"kind", "node", "phase", "ranges_moved", "ranges_total", "started_at"}}; `join(node_url)` asks
the ring to add the node at that URL; `leave(node_id)` starts its hand-off. Each call goes to
one node by pod IP; the node coordinates the change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from limedb_operator.scaling import RingView, freshest, ring_view_from_status

log = logging.getLogger(__name__)


def _client(url: str, secret: str | None) -> Any:
    from limedb.client import Client  # the node package; imported late so tests stay pure

    return Client(url, cluster_secret=secret)


def read_ring(urls: Sequence[str], secret: str | None, ask: int = 3) -> RingView | None:
    """Ask up to `ask` nodes (lowest ordinals first) and keep the freshest ring they report."""
    views = []
    for url in list(urls)[:ask]:
        try:
            client = _client(url, secret)
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
