"""Client authentication and authorization: users, roles and the credentials that prove them.

Users live in the cluster under a reserved key namespace (`records.py`), are read through a
short-lived cache (`store.py`), and are checked by `Authenticator` (`authenticator.py`), which
both front ends (HTTP and RESP) share. docs/security.md has the model.
"""

from limedb.auth.authenticator import Authenticator, Identity
from limedb.auth.roles import Role
from limedb.auth.store import UserStore

__all__ = ["Authenticator", "Identity", "Role", "UserStore"]
