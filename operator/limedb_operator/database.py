"""The operator's only door to LimeDB: admin status, join and leave through `limedb.client`.

Contract (limedb.client.Client, node/limedb/api/admin.py): `admin_status()` -> {"epoch",
"members": [{"node_id", "url", "state"}], "replication_factor", "transition": None | {"kind",
"change", "phase", "ranges_moved", "ranges_total", ...}}; `join(node_url)` adds a node started
with --await-join; `leave(node)` starts a member's hand-off; `set_replication_factor(rf)`.
Each call goes to one node by pod IP; that node proposes the change and the ring drives it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from limedb_operator import manifests
from limedb_operator.scaling import PodView, RingView, freshest, ring_view_from_status

log = logging.getLogger(__name__)


STATUS_TIMEOUT_S = 5.0  # a hung node must not stall the reconcile loop
CHANGE_TIMEOUT_S = 30.0  # a join waits (up to 15 s) for the new node to appear in gossip


@dataclass(frozen=True)
class Access:
    """What the operator presents to the nodes: user `admin` with the password of the cluster's
    admin Secret (manifests.admin_secret), and the cluster secret, which the nodes accept only
    until the first user exists (a cluster whose pods were not yet restarted with the bootstrap
    password); with spec.tls the CA their certificates chain to. `admin_secret` names where the
    password came from, for the condition that says it was refused."""

    secret: str | None
    ca_pem: str | None = None
    admin_password: str | None = None
    admin_secret: str = ""


def retry_with_secret(status: int, sent_authorization: bool, has_secret: bool) -> bool:
    """Whether a request refused with `status` is sent again with the cluster secret alone: a
    401 to the admin's credentials, from a node whose users do not exist yet."""
    return status == 401 and sent_authorization and has_secret


def refused_message(access: Access) -> str:
    """What the condition says when the nodes refuse the operator's credentials."""
    return (
        f"the nodes refuse user {manifests.ADMIN_USER} with the password in Secret "
        f"{access.admin_secret or '(none)'} and, as users exist, the cluster secret: users were "
        f"set up without that admin or its password was changed by hand; set it back "
        f"(limedb user passwd {manifests.ADMIN_USER}) or point spec.auth.adminSecretRef at a "
        "Secret with the admin's password"
    )


class SecretFallbackTransport(httpx.BaseTransport):
    """Sends the admin's credentials, and a request they got 401 for once more with the cluster
    secret alone (retry_with_secret)."""

    def __init__(self, inner: httpx.BaseTransport, has_secret: bool) -> None:
        self._inner, self._has_secret = inner, has_secret

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        sent = "authorization" in request.headers
        if not retry_with_secret(response.status_code, sent, self._has_secret):
            return response
        response.read()
        response.close()
        del request.headers["authorization"]
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class Target:
    """One node: its URL by pod IP, and the DNS name its certificate is checked against (the
    operator may not resolve cluster DNS; the certificate cannot name an IP it learns later)."""

    url: str
    server_name: str | None = None


def pod_target(namespace: str, pod: PodView) -> Target:
    """A pod by IP; over TLS (pod.scheme https) checked against its name in the headless
    Service, which its certificate holds (pod `<cluster>-<ordinal>`)."""
    if pod.scheme != "https":
        return Target(pod.url or "")
    cluster = pod.name.rsplit("-", 1)[0]
    return Target(pod.url or "", manifests.node_host(cluster, namespace, pod.ordinal))


class ServerNameTransport(httpx.BaseTransport):
    """Sends every request with TLS SNI and host-name check for `server_name`, whatever host the
    URL names (httpcore's `sni_hostname` request extension)."""

    def __init__(self, inner: httpx.BaseTransport, server_name: str) -> None:
        self._inner, self._server_name = inner, server_name

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions["sni_hostname"] = self._server_name
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _client(target: Target, access: Access, timeout: float = CHANGE_TIMEOUT_S) -> Any:
    from limedb.client import Client  # the node package; imported late so tests stay pure

    transport: httpx.BaseTransport
    if access.ca_pem is not None:
        context = ssl.create_default_context(cadata=access.ca_pem)
        transport = httpx.HTTPTransport(verify=context)
        if target.server_name:
            transport = ServerNameTransport(transport, target.server_name)
    else:
        transport = httpx.HTTPTransport()
    user = manifests.ADMIN_USER if access.admin_password is not None else None
    return Client(
        target.url,
        cluster_secret=access.secret,
        user=user,
        password=access.admin_password,
        timeout=timeout,
        transport=SecretFallbackTransport(transport, access.secret is not None),
    )


@dataclass(frozen=True)
class RingRead:
    """What the nodes asked answered: the freshest ring, and whether every node that answered
    refused the operator's credentials (401)."""

    view: RingView | None
    refused: bool = False


def read_ring(targets: Sequence[Target], access: Access, ask: int = 3) -> RingRead:
    """Ask up to `ask` nodes (lowest ordinals first) and keep the freshest ring they report."""
    from limedb.client import Unauthorized

    views, refusals = [], 0
    for target in list(targets)[:ask]:
        try:
            with _client(target, access, STATUS_TIMEOUT_S) as client:
                views.append(ring_view_from_status(client.admin_status()))
        except Unauthorized as e:
            refusals += 1
            log.warning(
                "admin status from %s refused the operator's credentials: %s", target.url, e
            )
        except Exception as e:  # any node may be restarting; others answer
            log.info("admin status from %s failed: %s", target.url, e)
    return RingRead(freshest(views), refused=refusals > 0 and not views)


def join(coordinator: Target, node_url: str, access: Access) -> None:
    with _client(coordinator, access) as client:
        client.join(node_url)


def leave(coordinator: Target, node_id: str, access: Access) -> None:
    with _client(coordinator, access) as client:
        client.leave(node_id)


def set_replication_factor(coordinator: Target, rf: int, access: Access) -> None:
    with _client(coordinator, access) as client:
        client.set_replication_factor(rf)


# Backups (docs/backup.md): the node asked coordinates the backup or restore; its
# `GET /admin/backup/status` follows it ({"current", "last"}: jobs with id, phase, progress).


class StartRefused(Exception):
    """The node would not start a backup or restore: `code` is its HTTP status (409 refused,
    404 no such backup, 502 the object store failed, 400 a bad location)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _start(target: Target, access: Access, call: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    from limedb.client import BadRequest, Refused

    client = _client(target, access)
    try:
        return getattr(client, call)(*args, **kwargs)["job"]
    except Refused as e:
        raise StartRefused(409, str(e)) from e
    except BadRequest as e:
        raise StartRefused(e.status, str(e)) from e
    finally:
        client.close()


def start_backup(
    node: Target, access: Access, to: str, endpoint: str | None, region: str | None,
    credentials: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Ask `node` to back the cluster up to `to`; its job ({"id", "backup_id", ...})."""
    return _start(node, access, "backup_create", to, endpoint=endpoint, region=region,
                  credentials=credentials or None)  # fmt: skip


def start_restore(
    node: Target, access: Access, source: str, backup: str | None, endpoint: str | None,
    region: str | None, credentials: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """Ask `node` to restore backup `backup` (None: the newest) of `source`."""
    return _start(node, access, "backup_restore", source, backup=backup, endpoint=endpoint,
                  region=region, credentials=credentials or None)  # fmt: skip


def backup_status(node: Target, access: Access) -> dict[str, Any] | None:
    """The node's running and last backup or restore, None when it does not answer."""
    try:
        with _client(node, access, STATUS_TIMEOUT_S) as client:
            return client.backup_status()
    except Exception as e:  # restarting, or gone: the caller decides what that means
        log.info("backup status from %s failed: %s", node.url, e)
        return None
