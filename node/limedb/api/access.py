"""Who may call which HTTP route: the role a request needs, and the check of its credentials.

Every route passes through `check` before it runs (the hot routes in `hot.serve`, whichever fast
path serves them, every other route in `fastpath.FastPath`), so no route can forget it:
- probes, /metrics, the OpenAPI pages, the dashboard's static files and `GET /admin/node` (a
  join's identity challenge) are open;
- `/admin/*` needs an admin user once users exist; before the first user exists, the cluster
  secret (`X-Cluster-Secret`), or nothing on an `--insecure` node, as before users existed;
- the data routes need `read` (GET, HEAD) or `readwrite` (anything else) with
  `auth_mode=required`, and are open with `off`, the default, since the original LimeDB's
  clients send no credentials.
Credentials are `Authorization: Basic` (user and password) or `Bearer` (a user's token); a
request that presents credentials is held to them in either mode (wrong ones: 401, a role too
low: 403), and they take precedence over the secret.
The cluster secret is a node's credential (the internal port: mutual TLS plus the secret). On
HTTP it only bootstraps: until the first user exists it passes every check (the admin routes,
and the data routes with `auth_mode=required`, where nothing else could pass then); once users
exist it passes none, so every admin action over HTTP is taken by a named admin user (who can
be removed, and whose password can be changed without restarting every node). The data routes
get nothing more from it: whoever holds the secret can act as a node on the internal port
anyway (docs/security.md), so a wider HTTP use would add exposure and protect nothing.
"Users exist" is the cluster's marker that the first user was made; it is never removed.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from limedb.api.errors import ApiError, not_ready
from limedb.api.state import NodeState
from limedb.auth import Identity, Role

CHALLENGE = {"WWW-Authenticate": 'Basic realm="limedb", charset="UTF-8", Bearer realm="limedb"'}
OPEN_PATHS = frozenset(
    {"/livez", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/admin/node"}
)
OPEN_PREFIXES = ("/ui", "/docs/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def needed_role(method: str, path: str) -> Role | None:
    """The role a request to `path` needs; None for the open routes."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path.startswith("/admin/"):
        return Role.ADMIN
    return Role.READ if method in READ_METHODS else Role.READWRITE


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, CHALLENGE)


def credentials_required() -> ApiError:
    return unauthorized("credentials required (Authorization: Basic or Bearer)")


def anonymous_refused(state: NodeState, credentials: tuple[bytes | None, bytes | None]) -> bool:
    """Whether a data request that presents nothing is refused outright (auth required): the
    wire path answers it before reading its body."""
    return credentials == (None, None) and state.config.auth_mode == "required"


def forbidden(identity: Identity, needed: Role) -> ApiError:
    return ApiError(
        403,
        f"user {identity.name} has role {identity.role.label}; this needs {needed.label}",
    )


async def identify(state: NodeState, authorization: bytes) -> Identity:
    """The user an Authorization header proves, or 401."""
    auth = state.auth
    if auth is None:
        raise not_ready()
    scheme, _, credentials = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise unauthorized("malformed Basic credentials") from None
        name, separator, password = decoded.partition(":")
        identity = await auth.password(name, password.encode()) if separator else None
        if identity is None:
            raise unauthorized("invalid user name or password")
        return identity
    if scheme == b"bearer":
        try:
            token = credentials.decode("ascii")
        except UnicodeDecodeError:
            raise unauthorized("invalid token") from None
        identity = await auth.token(token)
        if identity is None:
            raise unauthorized("invalid token")
        return identity
    raise unauthorized("unsupported authorization scheme (use Basic or Bearer)")


def secret_matches(state: NodeState, presented: bytes | None) -> bool:
    secret = state.config.cluster_secret
    return (
        presented is not None
        and secret is not None
        and hmac.compare_digest(presented, secret.encode())
    )


async def check(
    state: NodeState, needed: Role, authorization: bytes | None, secret: bytes | None
) -> None:
    """Raise 401/403 (ApiError) unless the request may run with role `needed`."""
    if authorization is not None:
        identity = await identify(state, authorization)
        if not identity.role.allows(needed):
            raise forbidden(identity, needed)
        return
    if secret_matches(state, secret):
        if await users_exist(state):
            raise admin_credentials_required()
        return
    if needed is Role.ADMIN:
        await _check_anonymous_admin(state)
        return
    if state.config.auth_mode == "required":
        raise credentials_required()


def admin_credentials_required() -> ApiError:
    return unauthorized(
        "admin credentials required: a user with role admin (Authorization: Basic or Bearer); "
        "the cluster secret is accepted only until the first user exists"
    )


async def users_exist(state: NodeState) -> bool:
    """Whether the cluster has users (then the secret opens nothing on HTTP); the store answers
    from any replica of its marker, and from what this node last saw when none answers."""
    auth = state.auth
    if auth is None:
        raise not_ready()
    return await auth.store.initialized()


async def _check_anonymous_admin(state: NodeState) -> None:
    """An admin request without credentials: refused unless the node has no secret and the
    cluster no users (an `--insecure` node, open as before users existed)."""
    if state.config.cluster_secret is not None:
        raise unauthorized(
            "admin routes need an admin user (Authorization: Basic or Bearer) or, until the "
            "first user exists, the cluster secret (X-Cluster-Secret header)"
        )
    if state.auth is not None and await users_exist(state):
        raise admin_credentials_required()


def guarded(state: NodeState, authorization: bytes | None) -> bool:
    """Whether a data request must be checked at all: with auth off and no credentials
    presented, it runs as before users existed (the hot paths skip `check` then)."""
    return authorization is not None or state.config.auth_mode == "required"
