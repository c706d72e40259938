"""Roles, password hashes, the reserved namespace and who may run what (HTTP and RESP)."""

from __future__ import annotations

import pytest
from limedb.api.access import needed_role
from limedb.auth import Role
from limedb.auth.passwords import PasswordHash, check_password, hash_password, verify
from limedb.auth.records import UserRecord, check_name, is_reserved, name_of, user_key
from limedb.resp.commands import NOAUTH, NOPERM_KEY, Command, resolve
from limedb.resp.encoding import RespError


def test_a_password_verifies_against_its_salted_hash_and_nothing_else() -> None:
    stored = hash_password(b"correct horse")
    again = hash_password(b"correct horse")
    assert stored.salt != again.salt and stored.digest != again.digest  # salted
    decoded = PasswordHash.decode(stored.encode())
    assert decoded == stored and stored.encode().startswith("scrypt$32768$8$1$")
    assert verify(b"correct horse", decoded)
    assert not verify(b"correct hors", decoded)
    assert not verify(b"x" * 2000, decoded)


def test_passwords_too_short_or_too_long_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        check_password("short")
    with pytest.raises(ValueError, match="at most"):
        check_password("x" * 1025)
    assert check_password("long enough") == b"long enough"


def test_roles_are_ordered_and_parsed_by_name() -> None:
    assert Role.ADMIN.allows(Role.READWRITE) and Role.READWRITE.allows(Role.READ)
    assert not Role.READ.allows(Role.READWRITE) and not Role.READWRITE.allows(Role.ADMIN)
    assert Role.parse(" ReadWrite ") is Role.READWRITE
    with pytest.raises(ValueError, match="read, readwrite, admin"):
        Role.parse("root")


def test_users_live_under_the_reserved_prefix_which_no_client_key_shares() -> None:
    key = user_key("alice")
    assert is_reserved(key) and name_of(key) == "alice"
    assert not is_reserved(b"limedb/users/alice") and name_of(b"alice") is None
    record = UserRecord("alice", Role.READ, "scrypt$1$1$1$AA==$AA==", None)
    assert UserRecord.decode(record.encode()) == record
    with pytest.raises(ValueError):
        check_name("a/b")
    with pytest.raises(ValueError):
        check_name("")


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/livez", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/admin/node", None),
        ("GET", "/ui/assets/dashboard.js", None),
        ("GET", "/admin/status", Role.ADMIN),
        ("GET", "/admin/users", Role.ADMIN),
        ("POST", "/admin/join", Role.ADMIN),
        ("GET", "/v1/kv/k", Role.READ),
        ("GET", "/api/v1/get/k", Role.READ),
        ("GET", "/api/v1/cluster/state", Role.READ),
        ("PUT", "/v1/kv/k", Role.READWRITE),
        ("DELETE", "/api/v1/del/k", Role.READWRITE),
        ("POST", "/api/v1/set", Role.READWRITE),
        ("POST", "/v1/batch", Role.READWRITE),
    ],
)
def test_each_http_route_needs_the_role_its_effect_calls_for(method, path, role) -> None:
    assert needed_role(method, path) is role


def _refusal(argv: list[bytes], **session) -> str | None:
    outcome = resolve(argv, True, **session)
    return str(outcome) if isinstance(outcome, RespError) else None


def test_resp_commands_are_refused_beyond_the_users_role_as_redis_acl_words_it() -> None:
    read = {"role": Role.READ, "user": "reader"}
    assert _refusal([b"GET", b"k"], **read) is None
    assert _refusal([b"SET", b"k", b"v"], **read) == (
        "NOPERM User reader has no permissions to run the 'set' command"
    )
    writer = {"role": Role.READWRITE, "user": "writer"}
    assert _refusal([b"SET", b"k", b"v"], **writer) is None
    assert _refusal([b"FLUSHALL"], **writer) == (
        "NOPERM User writer has no permissions to run the 'flushall' command"
    )
    assert _refusal([b"FLUSHALL"], role=Role.ADMIN, user="boss") is None
    # The open default user keeps the message that tells how to get the right.
    assert "--resp-password" in str(_refusal([b"FLUSHALL"]))
    assert resolve([b"GET", b"k"], False) is NOAUTH


def test_resp_refuses_every_key_argument_in_the_reserved_namespace() -> None:
    reserved = user_key("admin")
    admin = {"role": Role.ADMIN, "user": "boss"}
    for argv in (
        [b"GET", reserved],
        [b"SET", reserved, b"v"],
        [b"MSET", b"a", b"1", reserved, b"2"],
        [b"DEL", b"a", reserved],
        [b"WATCH", reserved],
    ):
        assert resolve(argv, True, **admin) is NOPERM_KEY, argv
    assert isinstance(resolve([b"MSET", b"a", reserved, b"b", b"2"], True, **admin), Command)
