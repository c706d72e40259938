"""The node's TLS in /metrics: which certificate it serves and until when, its reloads, and per
listener the connections taken as TLS or plaintext, the plaintext ones refused and the failed
handshakes (a client without the CA, a peer whose certificate another CA signed)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from limedb.tls import TlsMaterial


class TlsMetrics:
    """A Prometheus collector over a node's TlsMaterial and the listeners it serves."""

    def __init__(self, material: TlsMaterial) -> None:
        self.material = material

    def collect(self) -> Iterator[Metric]:
        material = self.material
        facts = material.facts
        if facts is not None:
            yield GaugeMetricFamily(
                "limedb_tls_certificate_expiry_timestamp_seconds",
                "when the certificate the node serves expires (notAfter, Unix time)",
                value=facts.not_after,
            )
            info = GaugeMetricFamily(
                "limedb_tls_certificate",
                "the certificate the node serves now, by serial number (hex); always 1",
                labels=["serial"],
            )
            info.add_metric([format(facts.serial, "x")], 1)
            yield info
        yield CounterMetricFamily(
            "limedb_tls_reloads", "certificate files reloaded after a change", material.reloads
        )
        yield CounterMetricFamily(
            "limedb_tls_reload_failures",
            "changed certificate files that did not load (the previous ones stay in use)",
            material.reload_failures,
        )
        connections = CounterMetricFamily(
            "limedb_tls_connections",
            "connections accepted, by listener and transport (tls or plaintext)",
            labels=["listener", "transport"],
        )
        refused = CounterMetricFamily(
            "limedb_tls_plaintext_refused",
            "plaintext connections closed by a listener in tls_mode required",
            labels=["listener"],
        )
        pending = CounterMetricFamily(
            "limedb_tls_pending_refused",
            "connections closed at accept: too many still in their first byte or handshake",
            labels=["listener"],
        )
        failed = CounterMetricFamily(
            "limedb_tls_handshake_failures",
            "TLS handshakes that failed (untrusted or missing certificate, timeout, garbage)",
            labels=["listener"],
        )
        for name, listener in sorted(material.listeners.items()):
            connections.add_metric([name, "tls"], listener.tls_connections)
            connections.add_metric([name, "plaintext"], listener.plain_connections)
            refused.add_metric([name], listener.plain_refused)
            failed.add_metric([name], listener.handshake_failures)
            pending.add_metric([name], listener.pending_refused)
        yield from (connections, refused, failed, pending)
