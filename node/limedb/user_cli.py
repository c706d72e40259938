"""`limedb user ...`: the cluster's users, through any node's `/admin/users`.

`add NAME --role ROLE --password-stdin`, `list`, `remove NAME`, `passwd NAME --password-stdin`
and `token NAME` (a new bearer token, printed once). The caller proves it may: an admin user
(`--user` / `--password`, LIMEDB_USER / LIMEDB_PASSWORD, or `--token`), or the cluster secret
(`--secret` / LIMEDB_CLUSTER_SECRET, else the secret file `limedb admin` finds), which is how
the first user is made when no bootstrap password created `admin`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from limedb.cli_tls import ca_option, given_ca
from limedb.credentials_cli import credential_options, read_new_password

DEFAULT_URL = "http://127.0.0.1:8484"
ROLES = ("read", "readwrite", "admin")

out = Console()
err = Console(stderr=True)


def _connection(command: Callable[..., Any]) -> Callable[..., Any]:
    command = ca_option(credential_options(command))
    command = click.option(
        "--secret",
        envvar="LIMEDB_CLUSTER_SECRET",
        default=None,
        help="The cluster secret [default: read from ./data/cluster-secret or "
        "./limedb-data/cluster-secret when no --user or --token is given].",
    )(command)
    return click.option(
        "--url", default=DEFAULT_URL, show_default=True, envvar="LIMEDB_URL", help="Any node."
    )(command)


def _call(options: dict[str, Any], call: Callable[[Any], Any]) -> Any:
    from limedb.client import Client, Forbidden, LimeDBError, Refused, Unauthorized
    from limedb.secret import find_secret

    secret = options["secret"]
    if secret is None and options["user"] is None and options["token"] is None:
        secret = find_secret()
    client = Client(
        options["url"],
        retries=2,
        cluster_secret=secret,
        user=options["user"],
        password=options["password"],
        token=options["token"],
        ca=given_ca(),
    )
    with client:
        try:
            return call(client)
        except (Unauthorized, Forbidden) as exc:
            err.print(f"[red]denied:[/red] {exc}", highlight=False)
            sys.exit(4)
        except Refused as exc:
            err.print(f"[red]refused:[/red] {exc}", highlight=False)
            sys.exit(3)
        except LimeDBError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(2)


@click.group(name="user")
def user() -> None:
    """Manage the cluster's users (roles: read, readwrite, admin)."""


@user.command(name="add")
@_connection
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do.")
@click.option(
    "--password-stdin", is_flag=True, required=True, help="Read the new password from stdin."
)
@click.argument("name")
def add(name: str, role: str, password_stdin: bool, **options: Any) -> None:
    """Add user NAME with ROLE; its password is the first line of standard input."""
    password = read_new_password(sys.stdin)
    _call(options, lambda client: client.add_user(name, role, password))
    out.print(f"user {name} added ({role})", highlight=False)


@user.command(name="list")
@_connection
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
def list_(as_json: bool, **options: Any) -> None:
    """List every user and its role."""
    users = _call(options, lambda client: client.users())
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(users).decode() + "\n")
        return
    table = Table("user", "role", "password", "token")
    for entry in users:
        table.add_row(
            entry["name"],
            entry["role"],
            "yes" if entry["password"] else "no",
            "yes" if entry["token"] else "no",
        )
    out.print(table)


@user.command(name="remove")
@_connection
@click.argument("name")
def remove(name: str, **options: Any) -> None:
    """Remove user NAME."""
    _call(options, lambda client: client.remove_user(name))
    out.print(f"user {name} removed", highlight=False)


@user.command(name="passwd")
@_connection
@click.option(
    "--password-stdin", is_flag=True, required=True, help="Read the new password from stdin."
)
@click.argument("name")
def passwd(name: str, password_stdin: bool, **options: Any) -> None:
    """Set the password of user NAME to the first line of standard input."""
    password = read_new_password(sys.stdin)
    _call(options, lambda client: client.set_password(name, password))
    out.print(f"password of {name} changed", highlight=False)


@user.command(name="token")
@_connection
@click.argument("name")
def token(name: str, **options: Any) -> None:
    """Issue a new bearer token for NAME and print it (the old one stops working)."""
    sys.stdout.write(_call(options, lambda client: client.issue_token(name)) + "\n")


def register(main: click.Group) -> None:
    main.add_command(user)
