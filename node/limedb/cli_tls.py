"""`--ca` (LIMEDB_CA) of every `limedb` command that talks to a node: the PEM CA bundle an
https:// node's certificate is checked against (without it, the system's trusted CAs).

Kept in the click context rather than passed as a parameter, so the commands' own signatures
do not change; `given_ca()` reads it where a client is made.
"""

from __future__ import annotations

import ssl

import click

CA_META = "limedb_ca"


def _keep_ca(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[CA_META] = value


def given_ca() -> str | None:
    """The --ca of the command being run (None: not given)."""
    return click.get_current_context().meta.get(CA_META)


def given_verify() -> ssl.SSLContext | bool:
    """httpx's `verify` for the command being run: its --ca, else the system's CAs."""
    ca = given_ca()
    return ssl.create_default_context(cafile=ca) if ca else True


ca_option = click.option(
    "--ca",
    envvar="LIMEDB_CA",
    default=None,
    expose_value=False,
    callback=_keep_ca,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle that signed the node's certificate (https:// URLs).",
)
