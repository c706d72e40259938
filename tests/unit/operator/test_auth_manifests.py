"""spec.auth of a LimeCluster as node settings: users required or not, and where the first
admin's password comes from (the user's Secret, or one the operator generates)."""

from limedb.config import SETTINGS
from limedb_operator import manifests

NAME, NS = "lime", "db"


def _env(spec: dict) -> dict:
    sts = manifests.statefulset(NAME, NS, manifests.with_defaults(spec), 3)
    return {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_without_spec_auth_nodes_keep_the_open_data_api_and_no_users() -> None:
    env = _env({})
    assert "LIMEDB_AUTH_MODE" not in env and "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD" not in env
    assert not manifests.generates_admin_secret(manifests.with_defaults({}))


def test_auth_enabled_requires_users_and_bootstraps_admin_from_a_generated_secret() -> None:
    spec = {"auth": {"enabled": True}}
    env = _env(spec)
    assert env["LIMEDB_AUTH_MODE"]["value"] == "required"
    ref = env["LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "lime-admin", "key": "password"}
    assert manifests.generates_admin_secret(spec)
    made = manifests.generated_secret("admin", NAME, NS, "tok")
    assert made["metadata"]["name"] == ref["name"] and made["stringData"] == {"password": "tok"}
    known = {s.env for s in SETTINGS}
    assert {"LIMEDB_AUTH_MODE", "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"} <= known


def test_an_admin_secret_ref_is_used_as_given_and_nothing_is_generated() -> None:
    spec = {"auth": {"enabled": True, "adminSecretRef": {"name": "ops-admin", "key": "pw"}}}
    ref = _env(spec)["LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ops-admin", "key": "pw"}
    assert not manifests.generates_admin_secret(spec)
    # Users (and so admin-only admin routes) without requiring them on the data routes.
    off = _env({"auth": {"adminSecretRef": {"name": "ops-admin"}}})
    assert "LIMEDB_AUTH_MODE" not in off
    assert off["LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "ops-admin",
        "key": "password",
    }


def test_users_cannot_swap_the_auth_settings_through_spec_env() -> None:
    env = _env(
        {
            "auth": {"enabled": True},
            "env": [
                {"name": "LIMEDB_AUTH_MODE", "value": "off"},
                {"name": "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD", "value": "weak"},
            ],
        }
    )
    assert env["LIMEDB_AUTH_MODE"]["value"] == "required"
    assert "valueFrom" in env["LIMEDB_BOOTSTRAP_ADMIN_PASSWORD"]
