"""Pure: the ServiceMonitor of a LimeCluster whose nodes serve HTTPS (docs/kubernetes.md,
"Monitoring").

The chart's one ServiceMonitor scrapes every plaintext cluster the operator watches. A cluster
with `spec.tls` serves /metrics over HTTPS only, under a certificate of its own CA, and a
ServiceMonitor may only name a CA in a Secret of its own namespace; so the operator gives each
such cluster a ServiceMonitor of its own, in the cluster's namespace and owned by it, that checks
the nodes' certificates against the CA of the Secret the pods mount, under the client Service's
name (every pod's certificate carries it). Its headless Service is labelled
`manifests.TLS_LABEL`, which the chart's ServiceMonitor leaves out. The chart turns this on
(`monitoring.enabled`) by handing the operator its scrape settings in SETTINGS_ENV.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from limedb_operator import manifests, tls

Obj = dict[str, Any]

SETTINGS_ENV = "LIMEDB_SERVICE_MONITOR"
API_VERSION = "monitoring.coreos.com/v1"
KIND = "ServiceMonitor"


@dataclass(frozen=True)
class Settings:
    """The chart's `monitoring` values the operator's ServiceMonitors repeat."""

    labels: Mapping[str, str] = field(default_factory=dict)
    interval: str = "15s"
    scrape_timeout: str = "10s"


def settings_from_env(environ: Mapping[str, str]) -> Settings | None:
    """None when the chart's monitoring kit is off (the variable unset or empty)."""
    raw = environ.get(SETTINGS_ENV, "").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{SETTINGS_ENV} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{SETTINGS_ENV} must be a JSON object, got {raw[:80]!r}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"{SETTINGS_ENV}: labels must map strings to strings")
    defaults = Settings()
    return Settings(
        labels=dict(labels),
        interval=str(data.get("interval") or defaults.interval),
        scrape_timeout=str(data.get("scrapeTimeout") or defaults.scrape_timeout),
    )


def service_monitor_name(name: str) -> str:
    return f"{name}-metrics"


def server_name(name: str, namespace: str) -> str:
    """The name the scrape checks every node's certificate against: the client Service's."""
    return f"{name}.{namespace}.svc"


def service_monitor(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    settings: Settings,
) -> Obj | None:
    """The ServiceMonitor of a TLS cluster; None for a plaintext one (the chart's scrapes it)."""
    secret = tls.serving_secret_name(name, spec)
    if secret is None:
        return None
    labels = manifests.labels(name)
    headless = {**labels, manifests.SERVICE_ROLE_LABEL: "headless"}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": service_monitor_name(name),
            "namespace": namespace,
            "labels": {**labels, **settings.labels},
        },
        "spec": {
            # job="limedb" and limecluster="<name>", as the chart's ServiceMonitor gives them:
            # the alerts and the dashboard read every cluster alike.
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": headless},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "scheme": "https",
                    "interval": settings.interval,
                    "scrapeTimeout": settings.scrape_timeout,
                    "tlsConfig": {
                        "ca": {"secret": {"name": secret, "key": tls.CA_FILE}},
                        "serverName": server_name(name, namespace),
                    },
                    "relabelings": [
                        {
                            "sourceLabels": [
                                "__meta_kubernetes_service_label_app_kubernetes_io_instance"
                            ],
                            "targetLabel": "limecluster",
                            "action": "replace",
                        }
                    ],
                }
            ],
        },
    }
