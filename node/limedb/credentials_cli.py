"""The credentials every `limedb` client command takes: `--user` / `--password` (HTTP Basic;
LIMEDB_USER / LIMEDB_PASSWORD), or `--token` (Bearer; LIMEDB_TOKEN)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def credential_options(command: F) -> F:
    """Add --user, --password and --token to a click command (as `user`, `password`, `token`)."""
    command = click.option(
        "--token", envvar="LIMEDB_TOKEN", default=None, help="A bearer token (LIMEDB_TOKEN)."
    )(command)
    command = click.option(
        "--password",
        envvar="LIMEDB_PASSWORD",
        default=None,
        help="Password of --user (LIMEDB_PASSWORD; the environment keeps it out of `ps`).",
    )(command)
    return click.option(
        "--user",
        envvar="LIMEDB_USER",
        default=None,
        help="Authenticate as this user (LIMEDB_USER).",
    )(command)


def credential_headers(user: str | None, password: str | None, token: str | None) -> dict:
    """The Authorization header of the given credentials (none: no header)."""
    if token:
        return {"authorization": f"Bearer {token}"}
    if user is None:
        return {}
    pair = f"{user}:{password or ''}".encode()
    return {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


def read_new_password(stream: Any) -> str:
    """The first line of `stream` (stdin), without its line ending; exits when it is empty."""
    line = stream.readline().rstrip("\r\n")
    if not line:
        raise click.UsageError("no password on standard input")
    return line
