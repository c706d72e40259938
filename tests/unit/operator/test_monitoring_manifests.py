"""A LimeCluster with spec.tls gets a ServiceMonitor of its own that scrapes /metrics over HTTPS
against the cluster's CA; a plaintext one is left to the chart's ServiceMonitor, which leaves the
TLS clusters' headless Services out."""

import pytest
from limedb_operator import manifests, monitoring

NAME, NS = "lime", "db"
SETTINGS = monitoring.Settings(labels={"release": "kps"}, interval="30s", scrape_timeout="5s")


def test_monitoring_is_off_unless_the_chart_hands_over_its_settings() -> None:
    assert monitoring.settings_from_env({}) is None
    assert monitoring.settings_from_env({monitoring.SETTINGS_ENV: " "}) is None
    got = monitoring.settings_from_env(
        {
            monitoring.SETTINGS_ENV: '{"labels": {"release": "kps"}, "interval": "30s",'
            ' "scrapeTimeout": "5s"}'
        }
    )
    assert got == SETTINGS
    assert monitoring.settings_from_env({monitoring.SETTINGS_ENV: "{}"}) == monitoring.Settings()


@pytest.mark.parametrize("raw", ["[]", '{"labels": {"a": 1}}', '{"labels": ["x"]}', "{"])
def test_malformed_settings_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=monitoring.SETTINGS_ENV):
        monitoring.settings_from_env({monitoring.SETTINGS_ENV: raw})


def test_a_plaintext_cluster_has_none_and_its_headless_service_no_tls_label() -> None:
    assert monitoring.service_monitor(NAME, NS, {}, SETTINGS) is None
    labels = manifests.headless_service(NAME, NS, {})["metadata"]["labels"]
    assert manifests.TLS_LABEL not in labels


def test_a_self_signed_tls_cluster_is_scraped_over_https_against_its_ca() -> None:
    spec = {"tls": {"enabled": True}}
    sm = monitoring.service_monitor(NAME, NS, spec, SETTINGS)
    assert sm is not None
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert sm["metadata"]["name"] == "lime-metrics" and sm["metadata"]["namespace"] == NS
    assert sm["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["port"] == "http"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "5s")
    # The CA from the Secret the pods mount (not lime-ca, which holds the CA's key too), and a
    # name every pod's certificate carries.
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "lime-tls", "key": "ca.crt"}}
    assert endpoint["tlsConfig"]["serverName"] == "lime.db.svc"
    assert "insecureSkipVerify" not in endpoint["tlsConfig"]
    # It selects exactly this cluster's headless Service.
    headless = manifests.headless_service(NAME, NS, spec)["metadata"]["labels"]
    client = manifests.client_service(NAME, NS)["metadata"]["labels"]
    other = manifests.headless_service("other", NS, spec)["metadata"]["labels"]
    wanted = sm["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= headless.items()
    assert not wanted.items() <= client.items()
    assert not wanted.items() <= other.items()
    assert headless[manifests.TLS_LABEL] == "true"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}


def test_a_cluster_serving_the_users_secret_is_checked_against_that_secrets_ca() -> None:
    spec = {"tls": {"enabled": True, "issuer": "secretName", "secretName": "my-certs"}}
    sm = monitoring.service_monitor(NAME, NS, spec, SETTINGS)
    assert sm is not None
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "my-certs", "key": "ca.crt"}}


def test_the_pods_certificates_carry_the_name_the_scrape_checks() -> None:
    from limedb_operator.certificates import pod_names

    names = pod_names(NAME, NS, "lime-0", manifests.headless_service_name(NAME))
    assert monitoring.server_name(NAME, NS) in names
