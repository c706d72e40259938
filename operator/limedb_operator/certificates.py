"""Pure: the certificates of a LimeCluster with `spec.tls.issuer: self-signed`.

The operator keeps one CA per cluster (Secret `<name>-ca`: `ca.crt`, `ca.key`) and, in the
Secret `<name>-tls`, the CA certificate (`ca.crt`) and one serving certificate and key per pod
(`<pod>.crt`, `<pod>.key`). A pod's certificate names every address the pod is reached under:
its own DNS name in the headless Service, the headless and the client Service, and
localhost / 127.0.0.1 for calls from inside the pod. Its extended key usages are serverAuth and
clientAuth: on the internal port the node presents the same certificate when it dials a peer
(mutual TLS).

Everything here takes the time and, where a key is made, nothing else from outside: the
operator decides with `serving_plan` what to (re)issue and writes the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 90
# A serving certificate is re-issued once two thirds of its lifetime have passed (30 days
# before expiry for 90 days): the node re-reads it from disk within a second, and the kubelet
# refreshes a Secret volume within a minute or two, so this leaves weeks for a failed attempt.
RENEW_AFTER_FRACTION = 2 / 3
CA_CERT_KEY, CA_KEY_KEY = "ca.crt", "ca.key"


@dataclass(frozen=True)
class KeyPair:
    cert_pem: str
    key_pem: str


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: as strong as RSA-3072 for TLS 1.2/1.3 and made in microseconds, so issuing one per
    # pod costs the reconcile loop nothing.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_ca(cluster: str, namespace: str, now: datetime, days: int = CA_DAYS) -> KeyPair:
    """A self-signed CA for one LimeCluster: it signs the pods' certificates and nothing else
    (path length 0)."""
    key = _key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LimeDB"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"limedb-ca {namespace}/{cluster}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def pod_names(
    cluster: str, namespace: str, pod: str, headless: str, domain: str = "cluster.local"
) -> list[str]:
    """The DNS names a pod's certificate covers: the pod in the headless Service (its node URL),
    the headless and the client Service, short and fully qualified, and localhost."""
    names = [f"{pod}.{headless}.{namespace}.svc", f"{pod}.{headless}.{namespace}.svc.{domain}"]
    names += [f"{pod}.{headless}", f"{pod}.{headless}.{namespace}"]
    for svc in (headless, cluster):
        names += [
            svc,
            f"{svc}.{namespace}",
            f"{svc}.{namespace}.svc",
            f"{svc}.{namespace}.svc.{domain}",
        ]
    names.append("localhost")
    return names


LOOPBACK_IPS = ("127.0.0.1", "::1")


def issue(
    ca: KeyPair, dns_names: Iterable[str], now: datetime, days: int = SERVING_DAYS
) -> KeyPair:
    """A serving (and client) certificate for `dns_names` and the loopback addresses, signed by
    `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    names = list(dict.fromkeys(dns_names))
    key = _key()
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_due(not_before: datetime, not_after: datetime, now: datetime) -> bool:
    """True once RENEW_AFTER_FRACTION of the certificate's lifetime has passed."""
    return now >= not_before + (not_after - not_before) * RENEW_AFTER_FRACTION


def still_good(
    cert_pem: str | None, ca_cert_pem: str, dns_names: Iterable[str], now: datetime
) -> bool:
    """Whether a pod may keep `cert_pem`: it parses, this CA signed it, it names exactly
    `dns_names` (and loopback), and its renewal is not due."""
    if not cert_pem:
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if not _signed_by(cert, ca):
        return False
    if set(alt.get_values_for_type(x509.DNSName)) != set(dns_names):
        return False
    return not renewal_due(cert.not_valid_before_utc, cert.not_valid_after_utc, now)


def serving_plan(
    ca: KeyPair,
    current: Mapping[str, str],
    wanted: Mapping[str, list[str]],
    now: datetime,
) -> dict[str, str] | None:
    """The new contents of the `<name>-tls` Secret, or None when `current` needs no change.

    `wanted` maps each pod that runs or is about to run to its DNS names. A pod whose certificate
    is missing, from another CA, for other names or due for renewal gets a new key and
    certificate; the others keep theirs. Entries of pods no longer wanted stay (a pod being
    removed still serves until it is gone)."""
    out = dict(current)
    changed = out.get(CA_CERT_KEY) != ca.cert_pem
    out[CA_CERT_KEY] = ca.cert_pem
    for pod, names in wanted.items():
        if still_good(current.get(f"{pod}.crt"), ca.cert_pem, names, now) and current.get(
            f"{pod}.key"
        ):
            continue
        pair = issue(ca, names, now)
        out[f"{pod}.crt"], out[f"{pod}.key"] = pair.cert_pem, pair.key_pem
        changed = True
    return out if changed else None
