"""What a PEM certificate says about itself that a node reports: its serial number and when it
expires, read from the DER encoding (RFC 5280's TBSCertificate) without a crypto library.

Python's `ssl` loads certificates into contexts but offers no public call that decodes one that
is not a CA; the node needs only two fields, so it walks the few DER elements in front of them.
"""

from __future__ import annotations

import calendar
import ssl
from dataclasses import dataclass

BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
INTEGER, SEQUENCE, UTC_TIME, GENERALIZED_TIME, VERSION = 0x02, 0x30, 0x17, 0x18, 0xA0


@dataclass(frozen=True)
class CertificateFacts:
    serial: int
    not_after: float  # seconds since the epoch


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the content) of the DER element at `at`."""
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[start : start + size], "big")
        start += size
    return tag, start, start + length


def _time(tag: int, text: str) -> float:
    if tag == UTC_TIME:  # YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    fields = (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14])
    return float(calendar.timegm(tuple(int(f) for f in fields) + (0, 0, 0)))


def read_facts(der: bytes) -> CertificateFacts:
    """Serial and notAfter of a DER certificate; ValueError when it is not one."""
    try:
        _, certificate, _ = _element(der, 0)
        tag, at, end = _element(der, certificate)  # TBSCertificate
        if tag != SEQUENCE:
            raise ValueError("no TBSCertificate")
        tag, start, stop = _element(der, at)
        if tag == VERSION:
            tag, start, stop = _element(der, stop)
        if tag != INTEGER:
            raise ValueError("no serial number")
        serial = int.from_bytes(der[start:stop], "big")
        for _ in range(2):  # signature algorithm, issuer
            _, _, stop = _element(der, stop)
        tag, validity, _ = _element(der, stop)
        _, _, stop = _element(der, validity)  # notBefore
        tag, start, stop = _element(der, stop)
        if tag not in (UTC_TIME, GENERALIZED_TIME):
            raise ValueError("no notAfter")
        return CertificateFacts(serial, _time(tag, der[start:stop].decode("ascii")))
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a DER certificate: {exc}") from None


def first_certificate_facts(pem_path: str) -> CertificateFacts:
    """Serial and expiry of the first certificate (the node's own) in a PEM chain file."""
    with open(pem_path) as f:
        text = f.read()
    begin = text.find(BEGIN)
    end = text.find(END, begin)
    if begin < 0 or end < 0:
        raise ValueError(f"{pem_path} holds no PEM certificate")
    return read_facts(ssl.PEM_cert_to_DER_cert(text[begin : end + len(END)]))
