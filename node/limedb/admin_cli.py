"""`limedb admin ...`: ring transitions and status from the command line.

Every command talks to one node (`--url`, any node of the ring) through `limedb.client`:
`join NODE_URL`, `leave NODE`, `replace DEAD_NODE NEW_NODE_URL`, `set-rf RF` start a
transition and return (or follow it to the end with `--wait`); `status` prints the ring epoch,
the members and the running transition with a progress bar (`--json`: the status object);
`repair` runs anti-entropy now; `verify` compares every replica's Merkle roots and repairs
differences (exit code 0 all agreed, 1 repaired, 2 could not check). The cluster secret comes from `--secret` / LIMEDB_CLUSTER_SECRET,
else from `data/cluster-secret` or `limedb-data/cluster-secret` under the working directory
(where `limedb cluster up` / `make run` and a single `limedb serve` keep it by default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from limedb.cli_tls import ca_option, given_ca
from limedb.credentials_cli import credential_options

DEFAULT_URL = "http://127.0.0.1:8484"

out = Console()
err = Console(stderr=True)


def url_option(command):  # noqa: ANN001, ANN201 - a click decorator
    """--url and --ca (limedb.cli_tls)."""
    return click.option(
        "--url", default=DEFAULT_URL, show_default=True, envvar="LIMEDB_URL", help="Any ring node."
    )(ca_option(command))


secret_option = click.option(
    "--secret",
    envvar="LIMEDB_CLUSTER_SECRET",
    default=None,
    help="The cluster secret [default: read from ./data/cluster-secret or "
    "./limedb-data/cluster-secret].",
)
wait_option = click.option("--wait", is_flag=True, help="Follow the transition until it ends.")


def node_client(url: str, secret: str | None):  # noqa: ANN202 - deferred import keeps --help fast
    from limedb.client import Client
    from limedb.secret import find_secret

    # An admin user (`limedb admin --user NAME ...`) or the cluster secret.
    context = click.get_current_context(silent=True)
    credentials = dict(context.obj or {}) if context is not None else {}
    if secret is None and not (credentials.get("user") or credentials.get("token")):
        secret = find_secret()
    return Client(url, retries=2, cluster_secret=secret, ca=given_ca(), **credentials)


def run_admin(url: str, secret: str | None, call: Callable[[Any], dict]) -> dict:
    from limedb.client import LimeDBError, Refused

    with node_client(url, secret) as client:
        try:
            return call(client)
        except Refused as exc:
            err.print(f"[red]refused:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(3)
        except LimeDBError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


def human_size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def render_transition(t: dict) -> Group:
    """A transition's progress: what it does, its phase, a bar, and the counters."""
    fraction = float(t.get("fraction") or 0.0)
    head = Text.assemble(
        (f"{t['id']}", "bold"), f"  {t.get('change', t.get('kind'))}  phase ", (t["phase"], "cyan")
    )
    eta = t.get("eta_s")
    counters = Text(
        f"ranges {t['ranges_moved']}/{t['ranges_total']}  keys {t['keys_streamed']}  "
        f"{human_size(t['bytes_streamed'])}  {human_size(t.get('rate') or 0)}/s  "
        f"ETA {'-' if eta is None else f'{eta:.0f}s'}"
    )
    bar = ProgressBar(total=1.0, completed=fraction, width=40)
    return Group(head, Group(bar, Text(f" {fraction * 100:.0f}%")), counters)


def render_status(status: dict) -> Group:
    table = Table(title=f"ring epoch {status['epoch']}, RF {status['replication_factor']}")
    for column in ("node", "url", "state", "liveness"):
        table.add_column(column)
    for m in status["members"]:
        table.add_row(m["node_id"], m["url"], m["state"], m["liveness"])
    parts: list[Any] = [table]
    t = status.get("transition")
    if t is None:
        last = status.get("last_transition")
        note = "no transition running"
        if last is not None:
            note += f" (last: {last['id']} {last['phase']})"
        parts.append(Text(note))
    else:
        parts.append(render_transition(t))
    repair = status.get("repair")
    if repair is not None:
        run = repair["current"] or repair["last"]
        if run is None:
            parts.append(Text("no repair has run yet"))
        else:
            state = "running" if repair["current"] else "last repair"
            parts.append(
                Text(
                    f"{state}: {run['ranges_compared']}/{run['ranges_total']} ranges compared, "
                    f"{run['ranges_differing']} differing, {run['keys_repaired']} keys repaired"
                    + (f", error: {run['error']}" if run.get("error") else "")
                )
            )
    verification = (status.get("verification") or {}).get("last")
    if verification is not None:
        parts.append(Text("last verification: ").append_text(render_verification(verification)))
    return Group(*parts)


def _follow(url: str, secret: str | None, transition_id: str) -> None:
    """Show progress until the transition is no longer running; exit 1 if rolled back."""
    from limedb.client import LimeDBError

    with node_client(url, secret) as client, Live(console=out, auto_refresh=False) as live:
        while True:
            try:
                status = client.admin_status()
            except LimeDBError as exc:
                live.update(Text(f"waiting for {url}: {exc}"), refresh=True)
                time.sleep(1.0)
                continue
            running = status.get("transition")
            if running is not None and running["id"] == transition_id:
                live.update(render_transition(running), refresh=True)
                time.sleep(0.5)
                continue
            last = status.get("last_transition") or {}
            if last.get("id") == transition_id:
                live.update(render_transition(last), refresh=True)
                if last["phase"] == "rolled_back":
                    err.print(f"[red]rolled back:[/red] {last.get('reason')}", highlight=False)
                    sys.exit(1)
            return


def _started(url: str, secret: str | None, result: dict, wait: bool) -> None:
    t = result["transition"]
    out.print(f"started {t['id']}: {t.get('change', t['kind'])}", highlight=False)
    if wait:
        _follow(url, secret, t["id"])


@click.group("admin")
@credential_options
@click.pass_context
def admin(context: click.Context, **credentials: str | None) -> None:
    """Change the ring (join, leave, replace, set-rf) and follow it (status).

    Authenticate as an admin user with --user/--password (LIMEDB_USER/LIMEDB_PASSWORD) or
    --token, or with the cluster secret (--secret on each command)."""
    context.obj = credentials


@admin.command("join")
@url_option
@secret_option
@wait_option
@click.argument("node_url")
def join(url: str, secret: str | None, wait: bool, node_url: str) -> None:
    """Add NODE_URL (a running node started with --await-join) to the ring."""
    _started(url, secret, run_admin(url, secret, lambda c: c.join(node_url)), wait)


@admin.command("leave")
@url_option
@secret_option
@wait_option
@click.argument("node")
def leave(url: str, secret: str | None, wait: bool, node: str) -> None:
    """Decommission NODE (id or URL): hand off every range, then leave."""
    _started(url, secret, run_admin(url, secret, lambda c: c.leave(node)), wait)


@admin.command("replace")
@url_option
@secret_option
@wait_option
@click.argument("dead_node")
@click.argument("new_node_url")
def replace(url: str, secret: str | None, wait: bool, dead_node: str, new_node_url: str) -> None:
    """NEW_NODE_URL (running, empty) takes over the ranges of DEAD_NODE."""
    result = run_admin(url, secret, lambda c: c.replace(dead_node, new_node_url))
    _started(url, secret, result, wait)


@admin.command("set-rf")
@url_option
@secret_option
@wait_option
@click.argument("rf", type=click.IntRange(1, 15))
def set_rf(url: str, secret: str | None, wait: bool, rf: int) -> None:
    """Change the replication factor to RF (streams the ranges that gain replicas)."""
    _started(url, secret, run_admin(url, secret, lambda c: c.set_replication_factor(rf)), wait)


@admin.command("status")
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="Print the status object as JSON.")
def status(url: str, secret: str | None, as_json: bool) -> None:
    """Ring epoch, members, and the running transition's progress."""
    result = run_admin(url, secret, lambda c: c.admin_status())
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out.print(render_status(result))


@admin.command("repair")
@url_option
@secret_option
@click.option("--range", "token_range", help="START:END tokens (default: every range).")
def repair(url: str, secret: str | None, token_range: str | None) -> None:
    """Run anti-entropy repair now."""
    start = end = None
    if token_range:
        try:
            start_text, end_text = token_range.split(":")
            start, end = int(start_text), int(end_text)
        except ValueError:
            raise click.BadParameter("expected START:END", param_hint="--range") from None
    result = run_admin(url, secret, lambda c: c.repair(start, end))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


VERIFY_EXIT = {"ok": 0, "repaired": 1}  # anything else (failed, refused, no answer): 2


def render_verification(v: dict) -> Text:
    head = {"ok": "green", "repaired": "yellow"}.get(v["result"], "red")
    text = Text.assemble(
        (v["result"], f"bold {head}"),
        f"  epoch {v['epoch']}: {v['rangesChecked']}/{v.get('rangesTotal', '?')} ranges "
        f"checked, {v['rangesRepaired']} repaired, {v['keysRepaired']} keys repaired",
    )
    if v.get("replicasUnreachable"):
        text.append(f"\nunreachable: {', '.join(v['replicasUnreachable'])}")
    if v.get("error"):
        text.append(f"\nerror: {v['error']}")
    return text


@admin.command("verify")
@url_option
@secret_option
@click.option("--epoch", type=click.IntRange(min=1), help="Only the ranges epoch N's change moved.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification as JSON.")
def verify(url: str, secret: str | None, epoch: int | None, as_json: bool) -> None:
    """Compare every replica's Merkle roots (of the ranges the transition to epoch N moved;
    default: every range of the current ring), repair differences. Exit code 0: every replica
    agreed; 1: something was repaired; 2: could not check (a replica unreachable, a transition
    running, no such epoch)."""
    from limedb.client import LimeDBError

    with node_client(url, secret) as client:
        try:
            result = client.verify(epoch)
        except LimeDBError as exc:
            err.print(f"[red]could not verify:[/red] {exc}", highlight=False)
            if as_json:  # still an object a script can read
                refused = {"epoch": epoch, "rangesChecked": 0, "rangesRepaired": 0}
                refused.update(keysRepaired=0, result="failed", error=str(exc))
                sys.stdout.write(orjson.dumps(refused, option=orjson.OPT_INDENT_2).decode() + "\n")
            sys.exit(2)
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.print(render_verification(result))
    sys.exit(VERIFY_EXIT.get(result.get("result"), 2))


def register(main: click.Group) -> None:
    from limedb.backup_cli import register as register_backup

    register_backup(admin)
    main.add_command(admin)
