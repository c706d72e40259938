"""`limedb cluster up` (a local cluster of real node processes) and `limedb status`.

`cluster up` starts N `limedb serve` processes in the foreground, each given the full static
member list and the cluster secret (generated on first start into DATA_DIR/cluster-secret,
where `limedb admin` finds it), prints their URLs and a live status line, and stops them all
on Ctrl-C (SIGTERM, then SIGKILL after a grace period). `status` asks one node for the cluster's members,
liveness, ring epoch and each node's share of the token space.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from limedb.cli_tls import ca_option, given_verify
from limedb.credentials_cli import credential_headers, credential_options
from limedb.secret import SECRET_FILE, load_or_create

TOKEN_SPACE = 1 << 64
STOP_GRACE_S = 10.0


def serve_command() -> list[str]:
    """How to start `limedb serve` with the same interpreter and installation as this CLI."""
    script = Path(sys.executable).with_name("limedb")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("limedb")
    if found:
        return [found, "serve"]
    return [sys.executable, "-c", "from limedb.cli import main; main()", "serve"]


def node_urls(host: str, base_port: int, nodes: int) -> list[str]:
    return [f"http://{host}:{base_port + i}" for i in range(nodes)]


INTERNAL_OFFSET = 1000  # a node's internal RPC port is its HTTP port + 1000


def node_ports(base_port: int, resp_base_port: int, nodes: int) -> list[tuple[int, int, int]]:
    """(HTTP, internal, RESP) ports of each node; RESP 0 = its listener off."""
    return [
        (
            base_port + i,
            base_port + i + INTERNAL_OFFSET,
            resp_base_port + i if resp_base_port else 0,
        )
        for i in range(nodes)
    ]


def busy_ports(host: str, ports: list[tuple[int, int, int]]) -> list[str]:
    """Which of the nodes' ports cannot be bound on `host` (in use, or out of range), named."""
    problems = []
    for i, (http, internal, resp) in enumerate(ports):
        for port, what in ((http, "HTTP"), (internal, "internal (HTTP + 1000)"), (resp, "RESP")):
            if what == "RESP" and not port:
                continue
            if not 0 < port <= 65535:
                problems.append(f"node {i}'s {what} port {port} is out of range")
                continue
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    problems.append(f"node {i}'s {what} port {port}: {exc.strerror}")
    return problems


def start_node(
    url: str,
    host: str,
    port: int,
    data_dir: Path,
    seeds: list[str],
    extra: tuple[str, ...],
    secret: str | None = None,
    resp_port: int = 0,
) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Several nodes share this machine: each gets its own RESP port, or none (not 6379 each).
    env["LIMEDB_RESP_PORT"] = str(resp_port)
    if secret is not None:
        # In the environment, not on the command line that every local user can read.
        env.setdefault("LIMEDB_CLUSTER_SECRET", secret)
    args = [
        *serve_command(),
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--advertise-url",
        url,
        "--seeds",
        ",".join(seeds),
        *extra,
    ]
    # The log sits next to the node's directory, which belongs to its storage engine; the
    # child keeps its own handle on it.
    with open(data_dir.with_name(data_dir.name + ".log"), "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def _probe(client: httpx.Client, url: str) -> dict | None:
    try:
        response = client.get(f"{url}/api/v1/cluster/gossip", timeout=0.5)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _status_line(urls: list[str], procs: list[subprocess.Popen], client: httpx.Client) -> Text:
    line = Text()
    for url, proc in zip(urls, procs, strict=True):
        if proc.poll() is not None:
            line.append(f"● {url} exited ({proc.returncode})  ", style="red")
            continue
        gossip = _probe(client, url)
        if gossip is None:
            line.append(f"● {url} starting  ", style="yellow")
        else:
            active = gossip.get("active_peers", 0)
            total = gossip.get("total_peers", 0)
            line.append(f"● {url} up, sees {active}/{total} peers  ", style="green")
    line.append(time.strftime("%H:%M:%S"), style="dim")
    return line


def stop_all(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@click.group("cluster")
def cluster() -> None:
    """Run a local cluster of real node processes."""


@cluster.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--base-port",
    default=8484,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="node i serves HTTP on BASE_PORT + i and its internal node-to-node RPC on "
    "BASE_PORT + i + 1000 (its internal port = HTTP + 1000): both must be free",
)
@click.option(
    "--resp-base-port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="node i serves the Redis protocol (RESP) on RESP_BASE_PORT + i; 0 = no RESP "
    "listener (`make run` gives 6379)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--data-dir",
    default="./data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="each node keeps its data in DATA_DIR/node-<i>",
)
@click.option(
    "--serve-arg",
    "serve_args",
    multiple=True,
    help="extra argument passed to every `limedb serve` (repeatable)",
)
@credential_options
def cluster_up(
    nodes: int,
    base_port: int,
    resp_base_port: int,
    host: str,
    data_dir: Path,
    serve_args: tuple[str, ...],
    user: str | None,
    password: str | None,
    token: str | None,
) -> None:
    """Start NODES `limedb serve` processes in the foreground; Ctrl-C stops them all.

    Each node uses three ports: HTTP (BASE_PORT + i), its internal RPC port (HTTP + 1000,
    node to node) and, with --resp-base-port, RESP (RESP_BASE_PORT + i)."""
    console = Console()
    urls = node_urls(host, base_port, nodes)
    ports = node_ports(base_port, resp_base_port, nodes)
    problems = busy_ports(host, ports)
    if problems:
        raise click.UsageError(
            "cannot start the cluster: " + "; ".join(problems) + " (choose other "
            "--base-port / --resp-base-port; each node also needs its HTTP port + 1000)"
        )
    procs: list[subprocess.Popen] = []
    # Ctrl-C and SIGTERM (e.g. from a supervisor) only set a flag that the loop checks: an
    # exception raised from a signal handler can land inside library code that swallows it.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    secret_file = data_dir / SECRET_FILE
    secret = load_or_create(secret_file)
    try:
        for i, url in enumerate(urls):
            node_dir = data_dir / f"node-{i}"
            http_port, _, resp_port = ports[i]
            procs.append(
                start_node(url, host, http_port, node_dir, urls, serve_args, secret, resp_port)
            )
        console.print(
            f"[bold]LimeDB cluster of {nodes} node(s)[/bold] (logs in {data_dir}/node-*.log, "
            f"cluster secret in {secret_file})"
        )
        for url, (_, internal, resp_port) in zip(urls, ports, strict=True):
            resp = (
                f"  RESP {host}:{resp_port} (redis-cli -h {host} -p {resp_port})"
                if resp_port
                else ""
            )
            console.print(f"  {url}{resp}  (internal port {internal})")
        console.print(
            f"Dashboard: {urls[0]}/ui (on any node; it asks for the cluster secret above, "
            "or an admin user once users exist)"
        )
        console.print("Ctrl-C stops every node.")
        # The status line: the secret passes the nodes' checks (also with
        # LIMEDB_AUTH_MODE=required) until the first user exists; from then on the user given
        # with --user/--password (LIMEDB_USER, LIMEDB_PASSWORD) or --token does.
        headers = {"x-cluster-secret": secret, **credential_headers(user, password, token)}
        with (
            httpx.Client(headers=headers) as client,
            Live(console=console, auto_refresh=False) as live,
        ):
            while not stop.is_set():
                live.update(_status_line(urls, procs, client), refresh=True)
                if all(proc.poll() is not None for proc in procs):
                    console.print("[red]every node has exited[/red]")
                    raise SystemExit(1)
                stop.wait(1.0)
        console.print("stopping...")
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stop_all(procs)
        console.print("stopped")


def _share(ranges: list[dict]) -> float:
    return sum(int(r.get("size", 0)) for r in ranges) / TOKEN_SPACE


@click.command("status")
@click.option("--url", default="http://127.0.0.1:8484", show_default=True, help="any node")
@ca_option
@credential_options
def status(url: str, user: str | None, password: str | None, token: str | None) -> None:
    """Members, liveness, ring epoch and token share per node, as one node sees them."""
    console = Console()
    url = url.rstrip("/")
    headers = credential_headers(user, password, token)
    try:
        with httpx.Client(timeout=5.0, headers=headers, verify=given_verify()) as client:
            state = client.get(f"{url}/api/v1/cluster/state").json()
            ring = client.get(f"{url}/api/v1/cluster/ring").json()
            gossip = client.get(f"{url}/api/v1/cluster/gossip").json()
            health = client.get(f"{url}/api/v1/health").json()
            disk = health.get("disk") or {}
            clock = health.get("clock")
    except (httpx.HTTPError, ValueError) as exc:
        console.print(f"[red]cannot reach {url}: {exc}[/red]")
        raise SystemExit(1) from exc
    liveness = {p["url"]: p.get("status", "?") for p in gossip.get("peer_details", [])}
    me = state.get("nodeUrl", url)
    liveness.setdefault(me, "active")
    ranges = ring.get("ranges", {})
    vnodes = ring.get("virtualNodeDistribution", {})
    table = Table(title=f"LimeDB cluster via {url} (ring epoch {state.get('ringEpoch', '?')})")
    for column in ("node", "liveness", "vnodes", "token share"):
        table.add_column(column, justify="right" if column != "node" else "left")
    styles = {"active": "green", "stale": "yellow", "dead": "red"}
    for member in state.get("peers", []):
        alive = liveness.get(member, "?")
        table.add_row(
            member + (" (this node)" if member == me else ""),
            Text(alive, style=styles.get(alive, "")),
            str(vnodes.get(member, "?")),
            f"{_share(ranges.get(member, [])) * 100:.1f}%",
        )
    console.print(table)
    console.print(
        f"health: {gossip.get('cluster_health', '?')}, "
        f"{gossip.get('active_peers', 0)}/{gossip.get('total_peers', 0)} peers active"
    )
    if disk.get("full"):
        console.print(f"[red]disk full, writes refused (507): {disk.get('reason')}[/red]")
    elif disk.get("outOfDescriptors"):
        console.print(f"[red]writes refused (503): {disk.get('reason')}[/red]")
    elif disk.get("reason"):
        console.print(f"[yellow]disk: {disk['reason']}[/yellow]")
    if clock:
        console.print(clock_line(clock))


def clock_line(clock: dict) -> Text:
    """This node's clock against the majority's, red when it refuses writes because of it."""
    text = (
        f"clock: {clock['offset_ms'] / 1000:+.3f} s from the majority "
        f"(max offset {clock['max_offset_ms'] / 1000:g} s), "
        f"{clock['timestamps_refused']} remote timestamps refused"
    )
    if clock["writes_allowed"]:
        return Text(text)
    return Text(text + "; REFUSES TO COORDINATE WRITES (fix this node's clock)", style="red")


def register(main: click.Group) -> None:
    """Add `limedb cluster ...` and `limedb status` to the `limedb` command."""
    main.add_command(cluster)
    main.add_command(status)
