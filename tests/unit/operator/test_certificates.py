"""spec.tls self-signed: the operator's CA and per-pod certificates (limedb_operator.certificates),
checked with Python's own TLS stack: a handshake between a server using a pod's certificate and
a client trusting the CA, by the names the certificate must cover."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from limedb_operator import certificates, issuing

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # pure decisions
LIVE = datetime.now(UTC)  # certificates a real handshake checks against the clock
NAMES = issuing.wanted_names("lime", "db", range(2))


def _files(tmp_path: Path, pair: certificates.KeyPair) -> tuple[str, str]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(pair.cert_pem)
    key.write_text(pair.key_pem)
    return str(cert), str(key)


def _handshake(tmp_path: Path, served: certificates.KeyPair, ca_pem: str, name: str) -> None:
    """One TLS handshake over a socket pair: server with `served`, client trusting `ca_pem` and
    checking `name`; raises ssl.SSLError (CertificateError) when the check fails."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp_path, served))
    client_ctx = ssl.create_default_context(cadata=ca_pem)
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=name) as c:
            c.sendall(b"x")
    finally:
        b.close()
        t.join(5)
        a.close()


def test_a_pod_certificate_is_trusted_for_its_pod_and_service_names_and_loopback(tmp_path):
    ca = certificates.new_ca("lime", "db", LIVE)
    pair = certificates.issue(ca, NAMES["lime-1"], LIVE)
    for name in (
        "lime-1.lime-headless.db.svc",
        "lime-1.lime-headless.db.svc.cluster.local",
        "lime.db.svc",
        "lime-headless.db.svc",
        "localhost",
        "127.0.0.1",
    ):
        _handshake(tmp_path, pair, ca.cert_pem, name)
    cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}


def test_another_pods_name_and_another_ca_are_refused(tmp_path):
    ca = certificates.new_ca("lime", "db", LIVE)
    pair = certificates.issue(ca, NAMES["lime-1"], LIVE)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(tmp_path, pair, ca.cert_pem, "lime-0.lime-headless.db.svc")
    other = certificates.new_ca("lime", "db", LIVE)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(tmp_path, pair, other.cert_pem, "lime-1.lime-headless.db.svc")


def test_renewal_is_due_after_two_thirds_of_the_lifetime():
    start = NOW
    end = NOW + timedelta(days=90)
    assert not certificates.renewal_due(start, end, NOW + timedelta(days=59))
    assert certificates.renewal_due(start, end, NOW + timedelta(days=60))
    assert certificates.renewal_due(start, end, end + timedelta(days=1))


def test_the_plan_issues_missing_pods_keeps_good_ones_and_renews_before_expiry():
    ca = certificates.new_ca("lime", "db", NOW)
    first = certificates.serving_plan(ca, {}, NAMES, NOW)
    assert first is not None
    assert set(first) == {"ca.crt", "lime-0.crt", "lime-0.key", "lime-1.crt", "lime-1.key"}
    assert first["ca.crt"] == ca.cert_pem
    # Nothing to do the next tick, nor a month later.
    assert certificates.serving_plan(ca, first, NAMES, NOW) is None
    assert certificates.serving_plan(ca, first, NAMES, NOW + timedelta(days=30)) is None
    # A scale-up to three pods: only the new pod gets a certificate.
    three = issuing.wanted_names("lime", "db", range(3))
    grown = certificates.serving_plan(ca, first, three, NOW)
    assert grown is not None and grown["lime-2.crt"]
    assert (grown["lime-0.crt"], grown["lime-1.key"]) == (first["lime-0.crt"], first["lime-1.key"])
    # 61 days later every certificate is re-issued, with a new key, before it expires.
    later = certificates.serving_plan(ca, grown, three, NOW + timedelta(days=61))
    assert later is not None
    for pod in three:
        assert later[f"{pod}.crt"] != grown[f"{pod}.crt"]
        assert later[f"{pod}.key"] != grown[f"{pod}.key"]
        cert = x509.load_pem_x509_certificate(later[f"{pod}.crt"].encode())
        assert cert.not_valid_after_utc > NOW + timedelta(days=61 + 89)


def test_certificates_of_another_ca_or_for_other_names_are_replaced():
    ca = certificates.new_ca("lime", "db", NOW)
    other = certificates.new_ca("lime", "db", NOW)
    current = {
        "ca.crt": ca.cert_pem,
        "lime-0.crt": certificates.issue(other, NAMES["lime-0"], NOW).cert_pem,
        "lime-0.key": "k",
        "lime-1.crt": certificates.issue(ca, ["lime-1.elsewhere"], NOW).cert_pem,
        "lime-1.key": "k",
    }
    plan = certificates.serving_plan(ca, current, NAMES, NOW)
    assert plan is not None
    for pod, names in NAMES.items():
        assert certificates.still_good(plan[f"{pod}.crt"], ca.cert_pem, names, NOW)
