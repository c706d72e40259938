"""The `limedb` command: `serve` a node, and `get` / `set` / `del` keys of a running one.

`main` is a click group; other modules add their commands with `main.add_command(...)`
(see `_register_extensions`), so this file stays small.
"""

from __future__ import annotations

import importlib
import sys

import click
from rich.console import Console

from limedb import __version__
from limedb.cli_tls import ca_option, given_ca
from limedb.config import ConfigError, load_config
from limedb.credentials_cli import credential_options

DEFAULT_URL = "http://127.0.0.1:8484"
# Modules that contribute commands to `limedb`, imported if present (e.g. `limedb cluster`).
EXTENSION_MODULES = ("limedb.cluster_cli", "limedb.admin_cli", "limedb.user_cli")

out = Console()
err = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="limedb")
def main() -> None:
    """LimeDB: a distributed key-value database."""


@main.command()
@click.option(
    "--host",
    help="Interface to bind [default: 127.0.0.1 alone, 0.0.0.0 with --seeds or --await-join].",
)
@click.option("--port", type=int, help="HTTP port [default: 8484].")
@click.option("--data-dir", help="Storage directory [default: ./limedb-data].")
@click.option("--node-id", help="Stable node identity [default: the advertise URL].")
@click.option("--advertise-url", help="URL peers and clients use to reach this node.")
@click.option("--seeds", help="Comma-separated URLs of peers to join.")
@click.option("--vnodes", type=int, help="Virtual nodes on the ring [default: 256].")
@click.option("--replication-factor", type=int, help="Copies of every key [default: 3].")
@click.option(
    "--durability",
    type=click.Choice(["sync", "periodic", "none"]),
    help="When writes are acknowledged [default: sync].",
)
@click.option("--max-value-bytes", type=int, help="Largest value accepted [default: 1 MiB].")
@click.option("--resp-port", type=int, help="RESP (Redis protocol) port, 0 = off [default: 6379].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--tls-cert", help="PEM certificate (chain) of this node (LIMEDB_TLS_CERT).")
@click.option("--tls-key", help="PEM private key of the certificate (LIMEDB_TLS_KEY).")
@click.option(
    "--tls-ca", help="PEM CA bundle; peers' certificates must chain to it (LIMEDB_TLS_CA)."
)
@click.option(
    "--tls-mode",
    type=click.Choice(["off", "on", "required"]),
    help="TLS on the HTTP, RESP and internal ports: on = TLS and plaintext, required = "
    "plaintext refused; files reloaded when they change (LIMEDB_TLS_MODE) [default: off].",
)
@click.option(
    "--await-join",
    is_flag=True,
    default=None,
    help="Start outside the ring and wait for `limedb admin join` (a node added to a cluster).",
)
@click.option(
    "--auth-mode",
    type=click.Choice(["off", "required"]),
    help="required: data routes and RESP commands need a user [default: off].",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Let a cluster member run without LIMEDB_CLUSTER_SECRET: internal and admin routes "
    "open to anyone who reaches them (LIMEDB_INSECURE=true).",
)
def serve(**flags: object) -> None:
    """Run a node in the foreground until SIGTERM or Ctrl-C.

    Every option can also be set as LIMEDB_<OPTION> in the environment (and with the LimeDB
    names SERVER_PORT, NODE_URL, NODE_PEERS, VIRTUAL_NODES, DATA_DIR). The cluster secret is
    read from LIMEDB_CLUSTER_SECRET only (a command line is visible to every local user); a
    node without seeds generates one in DATA_DIR/cluster-secret.
    """
    from limedb.secret import INSECURE_WARNING, SecretRequired, resolve

    try:
        config = resolve(load_config(flags))
    except ConfigError as exc:
        err.print(f"[red]limedb: configuration error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except SecretRequired as exc:
        err.print(f"[red]limedb: refusing to start:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if config.insecure and not config.cluster_secret:
        err.print(f"[bold red]{INSECURE_WARNING}[/bold red]", highlight=False, soft_wrap=True)
    from limedb.server import bootstrap_password
    from limedb.server import serve as run_server

    try:
        password = bootstrap_password(config)
        if password is not None:
            from limedb.auth.passwords import check_password

            check_password(password)
    except (OSError, ValueError) as exc:
        err.print(f"[red]limedb: bootstrap admin password:[/red] {exc}", highlight=False)
        sys.exit(2)

    out.print(
        f"LimeDB node [bold]{config.node_id}[/bold] serving at [cyan]{config.advertise_url}[/cyan]"
        f" (data in {config.data_dir}, durability {config.durability})",
        highlight=False,
    )
    sys.exit(run_server(config))


def url_option(command):  # noqa: ANN001, ANN201 - a click decorator
    """--url and --ca."""
    return click.option(
        "--url",
        default=DEFAULT_URL,
        show_default=True,
        envvar="LIMEDB_URL",
        help="Node to talk to.",
    )(ca_option(command))


def _client(url: str, credentials: dict):  # noqa: ANN202 - deferred import keeps --help fast
    from limedb.client import Client

    return Client(url, retries=2, ca=given_ca(), **credentials)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    sys.exit(code)


@main.command()
@url_option
@credential_options
@click.argument("key")
def get(url: str, key: str, **credentials: str | None) -> None:
    """Print the value of KEY (exit 1 if it does not exist)."""
    from limedb.client import KeyNotFound, LimeDBError

    with _client(url, credentials) as client:
        try:
            value = client.get(key)
        except KeyNotFound:
            _fail(f"key not found: {key}")
        except LimeDBError as exc:
            _fail(str(exc), 2)
    sys.stdout.buffer.write(value + b"\n")


@main.command(name="set")
@url_option
@credential_options
@click.option("--ttl", type=float, help="Expire after this many seconds.")
@click.argument("key")
@click.argument("value")
def set_(url: str, ttl: float | None, key: str, value: str, **credentials: str | None) -> None:
    """Store VALUE under KEY."""
    from limedb.client import LimeDBError

    with _client(url, credentials) as client:
        try:
            client.set(key, value, ttl=ttl)
        except LimeDBError as exc:
            _fail(str(exc), 2)
    out.print("OK")


@main.command(name="del")
@url_option
@credential_options
@click.argument("key")
def delete(url: str, key: str, **credentials: str | None) -> None:
    """Delete KEY (exit 1 if it did not exist)."""
    from limedb.client import LimeDBError

    with _client(url, credentials) as client:
        try:
            existed = client.delete(key)
        except LimeDBError as exc:
            _fail(str(exc), 2)
    if not existed:
        _fail(f"key not found: {key}")
    out.print("deleted")


def _register_extensions() -> None:
    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(main)


_register_extensions()
