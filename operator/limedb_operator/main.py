"""The `limedb-operator` command: run the kopf operator for LimeCluster resources."""

from __future__ import annotations

import argparse
import asyncio
import os

import kopf

from limedb_operator import logs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="limedb-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable); default $WATCH_NAMESPACE, or all with --all-namespaces",
    )
    parser.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    namespaces = args.namespace or [
        n for n in os.environ.get("WATCH_NAMESPACE", "").split(",") if n
    ]
    if not namespaces and not args.all_namespaces:
        parser.error("give --namespace, set WATCH_NAMESPACE, or pass --all-namespaces")

    kopf.configure(verbose=args.verbose)
    logs.quiet_at_rest(verbose=args.verbose)
    from limedb_operator import handlers  # noqa: F401  (registers the handlers)

    asyncio.run(
        kopf.operator(
            standalone=True,  # one replica (Recreate strategy): no peering objects needed
            clusterwide=args.all_namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness or None,
        )
    )


if __name__ == "__main__":
    main()
