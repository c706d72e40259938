"""spec.auth of a LimeCluster as node settings: users required or not, and where the first
admin's password comes from (the user's Secret, or one the operator generates); and the
credentials the operator's own admin calls present (database.Access)."""

from limedb.config import SETTINGS
from limedb_operator import database, manifests
from limedb_operator.scaling import Observed, PodView, decide
from limedb_operator.status import build_status, credentials_event

NAME, NS = "lime", "db"


def _env(spec: dict) -> dict:
    sts = manifests.statefulset(NAME, NS, manifests.with_defaults(spec), 3)
    return {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_without_spec_auth_there_are_no_users_and_the_operator_uses_the_cluster_secret() -> None:
    # No admin of the operator's making: with retained volumes the data would outlive a
    # generated Secret. The nodes take the cluster secret until a first user exists.
    env = _env({})
    assert "LIMEDB_AUTH_MODE" not in env
    assert "LIMEDB_BOOTSTRAP_ADMIN_PASSWORD" not in env
    assert not manifests.generates_admin_secret(manifests.with_defaults({}))
    assert manifests.admin_secret(NAME, {"auth": {"enabled": False}}) is None


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


def test_the_operator_falls_back_to_the_secret_only_on_a_401_to_its_admin_credentials() -> None:
    # A cluster whose pods were not restarted with the bootstrap password yet has no users:
    # the admin's credentials get 401 and the secret alone still opens the admin routes.
    assert database.retry_with_secret(401, sent_authorization=True, has_secret=True)
    assert not database.retry_with_secret(403, sent_authorization=True, has_secret=True)
    assert not database.retry_with_secret(200, sent_authorization=True, has_secret=True)
    assert not database.retry_with_secret(401, sent_authorization=False, has_secret=True)
    assert not database.retry_with_secret(401, sent_authorization=True, has_secret=False)


def test_refused_admin_credentials_are_a_condition_and_one_event_not_a_silent_loop() -> None:
    access = database.Access("s", None, "pw", "db/lime-admin (key password)")
    message = database.refused_message(access)
    assert "db/lime-admin" in message and "adminSecretRef" in message
    obs = Observed(NAME, NS, 3, 3, 3, tuple(_pod(i) for i in range(3)), None, "http", message)
    decision = decide(obs)
    assert decision.step.kind == "wait" and decision.step.reason == "AdminCredentialsRejected"
    assert decision.step.message == message
    status = build_status(obs, decision, {}, "2026-01-01T00:00:00Z", 1, [])
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "AdminCredentialsRejected"
    assert credentials_event(None, decision.step) == (
        "Warning",
        "AdminCredentialsRejected",
        message,
    )
    assert credentials_event(status["conditions"], decision.step) is None  # once, not every tick
    # Nodes that do not answer at all are another matter.
    unreachable = decide(Observed(NAME, NS, 3, 3, 3, tuple(_pod(i) for i in range(3))))
    assert unreachable.step.reason == "DatabaseUnreachable"
    assert credentials_event(None, unreachable.step) is None


def _pod(ordinal: int) -> PodView:
    return PodView(f"{NAME}-{ordinal}", ordinal, f"10.0.0.{ordinal}", ready=True)


def test_the_generated_admin_secret_stays_with_retained_volumes() -> None:
    """The users live on the volumes: while they are retained at deletion, so is the admin's
    password (a LimeCluster made again on them reads the same Secret); the cluster secret and
    the RESP password always go with the LimeCluster."""
    retain = manifests.with_defaults({"auth": {"enabled": True}})
    assert retain["pvcRetention"]["whenDeleted"] == "Retain"  # the default
    delete = manifests.with_defaults(
        {"auth": {"enabled": True}, "pvcRetention": {"whenDeleted": "Delete"}}
    )
    assert not manifests.owns_generated_secret("admin", retain)
    assert manifests.owns_generated_secret("admin", delete)
    for kind in ("cluster", "resp"):
        assert manifests.owns_generated_secret(kind, retain)
        assert manifests.owns_generated_secret(kind, delete)
