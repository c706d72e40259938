"""RESP protected mode from a real non-loopback source address: a node that listens on every
interface without a RESP password answers loopback clients only and tells the others how to
set one; with a password, remote clients get in after AUTH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import netns
from support.respwire import exchange
from support.wait import wait_for

pytestmark = pytest.mark.faults

LIMEDB = str(Path(sys.executable).with_name("limedb"))
RESP_PORT = 6379
PASSWORD = "resp-password-not-the-cluster-secret"

# Run inside a namespace: one RESP exchange over its loopback interface.
LOOPBACK_PING = (
    "import socket, time\n"
    f"s = socket.create_connection(('127.0.0.1', {RESP_PORT}), timeout=5)\n"
    "s.sendall(b'PING\\r\\nGET k\\r\\n')\n"
    "data = b''\n"
    "while data.count(b'\\r\\n') < 2:\n"
    "    data += s.recv(1024)\n"
    "print(data.decode().replace('\\r\\n', ' ').strip())\n"
)


def _serve(ns: netns.Namespace, data_dir: Path, env: dict[str, str]) -> None:
    """A lone node in `ns` bound beyond loopback (every interface), RESP on."""
    data_dir.mkdir(parents=True)
    log = open(data_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - lives as long as the node
    settings = {"LIMEDB_RESP_PORT": str(RESP_PORT), **env}
    ns.popen(
        ["env", *(f"{k}={v}" for k, v in settings.items()), LIMEDB, "serve",
         "--host", "0.0.0.0", "--port", "8484", "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()


def _exchange(address: str, payload: bytes) -> bytes:
    return exchange(address, RESP_PORT, payload, quiet_s=0.5)


def test_without_a_password_only_loopback_clients_are_served(netlab, tmp_path: Path) -> None:
    open_ns, guarded_ns = netlab.add_node(), netlab.add_node()
    _serve(open_ns, tmp_path / "open", {})
    _serve(guarded_ns, tmp_path / "guarded", {"LIMEDB_RESP_PASSWORD": PASSWORD})
    for ns in (open_ns, guarded_ns):
        wait_for(lambda ns=ns: netlab.hub.can_connect(ns.address, RESP_PORT), 60, ns.name)

    with netlab.hub.entered():  # every socket below comes from 10.213.0.1
        denied = _exchange(open_ns.address, b"PING\r\nSET k v\r\n")
        assert denied.startswith(b"-DENIED LimeDB is running in protected mode")
        assert b"--resp-password" in denied and denied.count(b"\r\n") == 1  # then closed
        # With a password the same remote client is asked to authenticate, and then served.
        assert _exchange(guarded_ns.address, b"PING\r\n").startswith(b"-NOAUTH")
        served = _exchange(guarded_ns.address, f"AUTH {PASSWORD}\r\nPING\r\n".encode())
        assert served == b"+OK\r\n+PONG\r\n"

    # A loopback client of the open node is served, and the denied SET wrote nothing.
    assert open_ns.run([sys.executable, "-c", LOOPBACK_PING]).stdout.strip() == "+PONG $-1"
