"""`limedb admin backup ...`: cluster backups to S3-compatible storage and restores.

`create` and `restore` ask one node (`--url`), which coordinates (docs/backup.md), and follow
its progress until the end (`--no-wait`: return at once); `status` shows the running or last
one, with a bar on a terminal. `list`, `verify` and `delete` read and change the bucket
directly. Credentials come from boto3's default chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws); `create` and `restore` hand
them to the node.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import orjson
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from limedb.admin_cli import (
    err,
    human_size,
    node_client,
    out,
    run_admin,
    secret_option,
    url_option,
)

LOST_AFTER_S = 15.0

endpoint_option = click.option(
    "--endpoint", envvar="AWS_ENDPOINT_URL_S3", default=None, help="S3 endpoint URL."
)
location_option = click.option(
    "--from", "--to", "location", required=True, help="s3://bucket/prefix of the backups."
)


def _credentials() -> dict[str, str]:
    import boto3

    found = boto3.session.Session().get_credentials()
    if found is None:
        return {}
    frozen = found.get_frozen_credentials()
    creds = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
    if frozen.token:
        creds["aws_session_token"] = frozen.token
    return creds


def _store(location: str, endpoint: str | None):  # noqa: ANN202 - deferred import
    from limedb.cluster.backup.location import Location, LocationError
    from limedb.cluster.backup.store import ObjectStore

    try:
        return ObjectStore(Location.parse(location, endpoint), _credentials())
    except LocationError as exc:
        raise click.BadParameter(str(exc), param_hint="--from/--to") from None


def _manifests(store: Any) -> list[dict]:
    from limedb.cluster.backup.retention import complete_backups

    return complete_backups(store)


def _store_call(call: Any) -> Any:
    from limedb.cluster.backup.store import StoreError

    try:
        return call()
    except StoreError as exc:
        err.print(f"[red]object store:[/red] {exc}", highlight=False)
        sys.exit(2)


def render_job(job: dict) -> Group:
    p = job["progress"]
    head = Text.assemble(
        (job["kind"], "bold"), f" {job['backup_id'] or job['id']}  ", (job["phase"], "cyan"),
        f"  {job['location']}",
    )  # fmt: skip
    eta = p.get("eta_s")
    counters = Text(
        f"files {p['files_done']}/{p['files_total']} ({p['files_skipped']} already stored)  "
        f"{human_size(p['bytes_done'])}/{human_size(p['bytes_total'])}  uploaded "
        f"{human_size(p['bytes_uploaded'])}  keys {p['keys']}  {human_size(p['rate'])}/s  "
        f"ETA {'-' if eta is None else f'{eta:.0f}s'}"
    )
    parts: list[Any] = [head, Group(ProgressBar(total=1.0, completed=p["fraction"], width=40),
                                    Text(f" {p['fraction'] * 100:.0f}%")), counters]  # fmt: skip
    if job.get("error"):
        parts.append(Text(f"error: {job['error']}", style="red"))
    return Group(*parts)


def _job_line(job: dict) -> str:
    p = job["progress"]
    return (
        f"{job['kind']} {job['backup_id'] or job['id']} {job['phase']} "
        f"files {p['files_done']}/{p['files_total']} bytes {p['bytes_done']}/{p['bytes_total']} "
        f"uploaded {p['bytes_uploaded']} keys {p['keys']}"
        + (f" error: {job['error']}" if job.get("error") else "")
    )


def _find(status: dict, job_id: str) -> dict | None:
    for job in (status.get("current"), status.get("last")):
        if job is not None and job["id"] == job_id:
            return job
    return None


def _follow(url: str, secret: str | None, job: dict) -> dict:
    """Poll the coordinating node until the job ends; exit 1 unless it completed."""
    from limedb.client import LimeDBError

    tty = out.is_terminal
    lost_since: float | None = None
    with node_client(url, secret) as client, Live(console=out, auto_refresh=False) as live:
        while job["phase"] == "running":
            time.sleep(0.5)
            try:
                found = _find(client.backup_status(), job["id"])
            except LimeDBError as exc:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_AFTER_S:
                    live.stop()
                    err.print(
                        f"[red]lost {url}[/red], which coordinates {job['kind']} {job['id']}: "
                        f"{exc}. It is not complete; run it again.", highlight=False, soft_wrap=True,
                    )  # fmt: skip
                    sys.exit(1)
                continue
            lost_since = None
            if found is None:
                live.stop()
                err.print(f"[red]{url} no longer knows {job['id']}[/red] (restarted?): it is "
                          "not complete; run it again.", highlight=False, soft_wrap=True)  # fmt: skip
                sys.exit(1)
            job = found
            if tty:
                live.update(render_job(job), refresh=True)
    if not tty:
        out.print(_job_line(job), highlight=False, soft_wrap=True)
    if job["phase"] != "complete":
        err.print(f"[red]{job['kind']} failed:[/red] {job['error']}", highlight=False,
                  soft_wrap=True)  # fmt: skip
        sys.exit(1)
    return job


@click.group("backup")
def backup() -> None:
    """Back the cluster up to S3-compatible storage, restore, verify, prune."""


@backup.command("create")
@url_option
@secret_option
@click.option("--to", "to", required=True, help="s3://bucket/prefix")
@endpoint_option
@click.option("--no-wait", is_flag=True, help="Return once the backup has started.")
def create(url: str, secret: str | None, to: str, endpoint: str | None, no_wait: bool) -> None:
    """Back up every node at one ring epoch; prints the backup id as the last line."""
    creds = _credentials()
    job = run_admin(
        url, secret, lambda c: c.backup_create(to, endpoint=endpoint, credentials=creds)
    )["job"]
    if not no_wait:
        job = _follow(url, secret, job)
    sys.stdout.write(f"{job['backup_id']}\n")


@backup.command("restore")
@url_option
@secret_option
@click.option("--from", "source", required=True, help="s3://bucket/prefix")
@click.option("--backup", "backup_id", default=None, help="Backup id [default: the newest].")
@endpoint_option
@click.option("--merge", is_flag=True, help="Restore into a cluster that holds data (LWW).")
@click.option("--no-wait", is_flag=True, help="Return once the restore has started.")
def restore(
    url: str, secret: str | None, source: str, backup_id: str | None, endpoint: str | None,
    merge: bool, no_wait: bool,
) -> None:  # fmt: skip
    """Restore a backup into this (new, empty) cluster of any size and RF."""
    creds = _credentials()
    job = run_admin(
        url, secret,
        lambda c: c.backup_restore(source, backup=backup_id, endpoint=endpoint,
                                   credentials=creds, merge=merge),
    )["job"]  # fmt: skip
    if not no_wait:
        job = _follow(url, secret, job)
    elif job["phase"] == "complete":
        out.print(f"backup {job['backup_id']} is already restored here", highlight=False)
    sys.stdout.write(f"{job['backup_id']}\n")


@backup.command("status")
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="Print the status object as JSON.")
def status(url: str, secret: str | None, as_json: bool) -> None:
    """The running (else the last) backup or restore that node coordinates."""
    result = run_admin(url, secret, lambda c: c.backup_status())
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    job = result.get("current") or result.get("last")
    if job is None:
        out.print("no backup or restore has run on this node")
    elif out.is_terminal:
        out.print(render_job(job))
    else:
        out.print(_job_line(job), highlight=False, soft_wrap=True)


@backup.command("list")
@location_option
@endpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifests' summaries as JSON.")
def list_(location: str, endpoint: str | None, as_json: bool) -> None:
    """The complete backups in the bucket, oldest first."""
    store = _store(location, endpoint)
    found = _store_call(lambda: _manifests(store))
    rows = [
        {k: m[k] for k in ("id", "finished_ms", "duration_s", "files", "bytes", "entries",
                           "bytes_uploaded")} | {"nodes": len(m["nodes"])}
        for m in found
    ]  # fmt: skip
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"backups in {store.location.url}")
    for column in ("id", "finished (UTC)", "nodes", "files", "size", "uploaded", "duration"):
        table.add_column(column)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["finished_ms"] / 1000))
        table.add_row(r["id"], when, str(r["nodes"]), str(r["files"]), human_size(r["bytes"]),
                      human_size(r["bytes_uploaded"]), f"{r['duration_s']:.1f}s")  # fmt: skip
    out.print(table)


@backup.command("verify")
@location_option
@endpoint_option
@click.option("--backup", "backup_id", default=None, help="Backup id [default: the newest].")
def verify(location: str, endpoint: str | None, backup_id: str | None) -> None:
    """Every file of the backup is present and matches its sha256 (downloads them all)."""
    from limedb.cluster.backup import manifest as manifests

    store = _store(location, endpoint)
    if backup_id is None:
        chosen = manifests.newest(_store_call(lambda: _manifests(store)))
    else:
        chosen = _store_call(lambda: store.get_json(store.location.manifest_key(backup_id)))
    if chosen is None:
        err.print(f"[red]no complete backup {backup_id or ''} in {store.location.url}[/red]")
        sys.exit(1)
    problems = []
    tables = manifests.tables_of(chosen)
    for sha in sorted(tables):
        key = store.location.table_key(sha)
        got = _store_call(lambda key=key: store.sha256_of_object(key))
        if got is None:
            problems.append(f"missing: {key}")
        elif got != sha:
            problems.append(f"checksum mismatch: {key} has sha256 {got}")
    if problems:
        for line in problems:
            err.print(f"[red]{line}[/red]", highlight=False)
        err.print(f"backup {chosen['id']}: {len(problems)} of {len(tables)} files bad")
        sys.exit(1)
    out.print(
        f"backup {chosen['id']} verified: {len(tables)} files, "
        f"{human_size(sum(tables.values()))}, every checksum matches",
        highlight=False,
    )


@backup.command("delete")
@location_option
@endpoint_option
@click.option("--backup", "backup_ids", multiple=True, help="Delete this backup (repeatable).")
@click.option("--keep-last", type=click.IntRange(0), default=None, help="Keep the newest N.")
@click.option("--older-than", default=None, help="Delete backups older than D (30m, 12h, 7d).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
def delete(
    location: str, endpoint: str | None, backup_ids: tuple[str, ...], keep_last: int | None,
    older_than: str | None, dry_run: bool,
) -> None:  # fmt: skip
    """Delete backups by id or by retention, then every table no kept backup references."""
    from limedb.cluster.backup import manifest as manifests
    from limedb.cluster.backup import retention

    try:
        age_s = None if older_than is None else manifests.parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    if not backup_ids and keep_last is None and age_s is None:
        raise click.UsageError("name --backup ID, --keep-last N or --older-than D")
    store = _store(location, endpoint)
    found = _store_call(lambda: _manifests(store))
    known = {m["id"] for m in found}
    unknown = [b for b in backup_ids if b not in known]
    if unknown:
        err.print(f"[red]no such backup:[/red] {', '.join(unknown)}", highlight=False)
        sys.exit(1)
    doomed = set(backup_ids) | set(
        manifests.expired(found, keep_last, age_s, int(time.time() * 1000))
    )
    deletion = _store_call(lambda: retention.plan(store, doomed, found))
    for backup_id in deletion.doomed:
        out.print(f"{'would delete' if dry_run else 'deleting'} backup {backup_id}")
    if deletion.running:
        out.print(f"{deletion.running} backup(s) running: unreferenced tables are kept for now")
    if dry_run:
        out.print(f"would delete {len(deletion.orphans)} unreferenced tables")
        return
    _store_call(lambda: retention.carry_out(store, deletion))
    out.print(
        f"deleted {len(deletion.doomed)} backups and {len(deletion.orphans)} tables; "
        f"kept {len(deletion.kept)} backups",
        highlight=False,
    )


def register(admin: click.Group) -> None:
    admin.add_command(backup)
