"""`python -m limedb_operator.uninstall`: the chart's pre-delete hook for a chart-made LimeCluster.

`helm uninstall` deletes the operator, its Role and the LimeCluster together; the operator then
can no longer release the LimeCluster (kopf's finalizer, which stops its timer), and the
database would stay. Helm runs this hook first, while the operator still runs: it deletes the
LimeCluster and waits until the operator has let it go. The garbage collector then removes the
StatefulSet, pods, Services, Secrets and PDB, and the PVCs when pvcRetention.whenDeleted=Delete.
"""

from __future__ import annotations

import argparse
import sys
import time

import kubernetes
from kubernetes.client.rest import ApiException

from limedb_operator import manifests
from limedb_operator.kube import load_config

POLL_S = 0.5


def delete_and_wait(api: kubernetes.client.CustomObjectsApi, namespace: str, name: str,
                    timeout_s: float) -> bool:  # fmt: skip
    """Delete the LimeCluster (gone already is fine); True once it no longer exists."""
    args = (manifests.GROUP, manifests.VERSION, namespace, manifests.PLURAL, name)
    try:
        api.delete_namespaced_custom_object(*args, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            api.get_namespaced_custom_object(*args)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m limedb_operator.uninstall", description=__doc__
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True, help="the LimeCluster")
    parser.add_argument("--timeout", type=float, default=50.0, help="seconds to wait for it")
    args = parser.parse_args(argv)
    load_config()
    api = kubernetes.client.CustomObjectsApi()
    if delete_and_wait(api, args.namespace, args.name, args.timeout):
        print(f"LimeCluster {args.namespace}/{args.name} deleted")
        return 0
    print(
        f"LimeCluster {args.namespace}/{args.name} still exists after {args.timeout:.0f}s: is the "
        "operator running? (it releases the LimeCluster's finalizer)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
