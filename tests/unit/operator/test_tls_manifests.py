"""spec.tls of a LimeCluster as what its pods run with: TLS required on every listener, https
identities and seeds, the certificate Secret mounted read-only, HTTPS probes."""

from __future__ import annotations

from limedb.config import SETTINGS
from limedb_operator import manifests, tls
from limedb_operator.scaling import Member, Observed, PodView, RingView, decide

NAME, NS = "lime", "db"


def _pod(spec: dict) -> dict:
    sts = manifests.statefulset(NAME, NS, manifests.with_defaults(spec), 3)
    return sts["spec"]["template"]


def _env(spec: dict) -> dict:
    return {e["name"]: e.get("value") for e in _pod(spec)["spec"]["containers"][0]["env"]}


def test_without_tls_nothing_changes():
    pod = _pod({})
    env = _env({})
    assert not any(k.startswith("LIMEDB_TLS_") for k in env)
    assert env["LIMEDB_ADVERTISE_URL"].startswith("http://")
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp"]
    assert "scheme" not in pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]


def test_self_signed_mounts_the_pods_own_certificate_and_requires_tls_everywhere():
    spec = {"tls": {"enabled": True}}
    env = _env(spec)
    assert env["LIMEDB_TLS_MODE"] == "required"
    assert env["LIMEDB_TLS_CERT"] == "/etc/limedb/tls/$(POD_NAME).crt"
    assert env["LIMEDB_TLS_KEY"] == "/etc/limedb/tls/$(POD_NAME).key"
    assert env["LIMEDB_TLS_CA"] == "/etc/limedb/tls/ca.crt"
    assert {"LIMEDB_TLS_MODE", "LIMEDB_TLS_CERT", "LIMEDB_TLS_KEY", "LIMEDB_TLS_CA"} <= {
        s.env for s in SETTINGS
    }
    assert env["LIMEDB_ADVERTISE_URL"] == "https://$(POD_NAME).lime-headless.db.svc:8484"
    assert env["LIMEDB_SEEDS"].split(",") == [
        f"https://lime-{i}.lime-headless.db.svc:8484" for i in range(3)
    ]
    pod = _pod(spec)
    container = pod["spec"]["containers"][0]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"] == {"secretName": "lime-tls", "defaultMode": 0o440}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/limedb/tls", "readOnly": True}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    # The CA's key lives in its own Secret, never mounted.
    assert tls.ca_secret_name(NAME) not in {
        v.get("secret", {}).get("secretName") for v in pod["spec"]["volumes"]
    }


def test_a_users_secret_is_mounted_as_given():
    spec = {"tls": {"enabled": True, "issuer": "secretName", "secretName": "my-certs"}}
    env = _env(spec)
    assert (env["LIMEDB_TLS_CERT"], env["LIMEDB_TLS_KEY"], env["LIMEDB_TLS_CA"]) == (
        "/etc/limedb/tls/tls.crt",
        "/etc/limedb/tls/tls.key",
        "/etc/limedb/tls/ca.crt",
    )
    volume = next(v for v in _pod(spec)["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "my-certs"


def test_a_founder_recreated_after_leaving_asks_the_seeds_with_the_ca():
    assert 'ca = os.environ.get("LIMEDB_TLS_CA")' in manifests.NODE_ENTRYPOINT
    assert "ca=ca" in manifests.NODE_ENTRYPOINT


def test_over_tls_the_operator_matches_pods_to_https_node_ids():
    """Ring members are https URLs; a scale-up joins pod 3 only once 0-2 count as members."""
    members = tuple(Member(manifests.node_url(NAME, NS, i, "https"), "Normal") for i in range(3))
    ring = RingView(epoch=3, members=members, replication_factor=3)
    pods = tuple(PodView(f"lime-{i}", i, f"10.0.0.{i}", True, scheme="https") for i in range(4))
    obs = Observed(NAME, NS, 4, 3, 4, pods, ring, scheme="https")
    step = decide(obs).step
    assert step.kind == "join" and step.pod is not None and step.pod.name == "lime-3"
    assert step.pod.url == "https://10.0.0.3:8484"


def test_over_tls_the_operator_checks_a_pods_certificate_against_its_dns_name():
    from limedb_operator.database import Target, pod_target

    https = PodView("lime-2", 2, "10.0.0.2", True, scheme="https")
    assert pod_target(NS, https) == Target("https://10.0.0.2:8484", "lime-2.lime-headless.db.svc")
    plain = PodView("my-db-1", 1, "10.0.0.1", True)
    assert pod_target(NS, plain) == Target("http://10.0.0.1:8484", None)
