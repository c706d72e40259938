"""TLS settings, the reload of certificate files and the listener that tells TLS from plaintext
by the first byte, in process on both event loops (certificates made by `openssl`)."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import uvloop
from limedb.certificate import first_certificate_facts
from limedb.config import ConfigError, load_config
from limedb.tls import TlsFiles, TlsMaterial
from limedb.tls_listener import SniffingListener
from support.certs import client_context, issue, make_ca
from support.wait import wait_for_async

pytestmark = pytest.mark.process  # openssl makes the certificates

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("pki")
    ca = make_ca(base, "ca")
    return ca, base


def _material(pki, tmp_path: Path, mode: str, serial: int = 1) -> TlsMaterial:
    ca, _ = pki
    cert = issue(ca, tmp_path, "node", ["127.0.0.1"], serial)
    modes = {"http": mode, "resp": mode, "internal": mode}
    return TlsMaterial(TlsFiles(str(cert.cert), str(cert.key), str(ca.cert)), modes)


def test_tls_settings_need_all_three_files_and_make_the_default_url_https(pki, tmp_path):
    ca, _ = pki
    cert = issue(ca, tmp_path, "node", ["127.0.0.1"], 1)
    env = {
        "LIMEDB_TLS_CERT": str(cert.cert),
        "LIMEDB_TLS_KEY": str(cert.key),
        "LIMEDB_TLS_CA": str(ca.cert),
    }
    with pytest.raises(ConfigError, match="tls_mode is off"):
        load_config({}, env)
    config = load_config({"tls_mode": "required"}, env)
    assert config.advertise_url == "https://127.0.0.1:8484"
    with pytest.raises(ConfigError, match="needs tls_ca"):
        load_config({"tls_mode": "on"}, {k: v for k, v in env.items() if "CA" not in k})
    with pytest.raises(ConfigError, match="no such file"):
        load_config({"tls_mode": "on"}, {**env, "LIMEDB_TLS_KEY": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="tls_mode"):
        load_config({"tls_mode": "maybe"}, env)
    # One listener's own mode: the others follow tls_mode.
    mixed = load_config({"tls_mode": "required"}, {**env, "LIMEDB_HTTP_TLS_MODE": "on"})
    assert (mixed.http_tls_mode, mixed.resp_tls_mode, mixed.internal_tls_mode) == (
        "on",
        "required",
        "required",
    )
    internal_only = load_config({}, {**env, "LIMEDB_INTERNAL_TLS_MODE": "required"})
    assert internal_only.advertise_url == "http://127.0.0.1:8484"  # HTTP stays plaintext
    assert TlsMaterial.from_config(internal_only).modes == {
        "http": "off",
        "resp": "off",
        "internal": "required",
    }
    assert TlsMaterial.from_config(load_config({}, {})) is None


def test_changed_files_are_reloaded_and_a_half_written_set_keeps_the_old(pki, tmp_path):
    material = _material(pki, tmp_path, "required", serial=1)
    first = material.contexts
    assert not material.refresh()  # nothing changed
    ca, _ = pki
    # The key of a new certificate is in place, its certificate not yet: not loadable.
    other = issue(ca, tmp_path / "next", "node", ["127.0.0.1"], 2)
    Path(material.files.key).write_bytes(other.key.read_bytes())
    assert not material.refresh()
    assert material.contexts is first and material.reload_failures == 1
    Path(material.files.cert).write_bytes(other.cert.read_bytes())
    assert material.refresh()
    assert material.contexts is not first and material.reloads == 1


async def _exchange(port: int, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
    )
    try:
        writer.write(b"PING\n")
        await writer.drain()
        return await reader.read(100)
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        writer.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        tls = self.transport.get_extra_info("sslcontext") is not None
        self.transport.write((b"tls:" if tls else b"plain:") + data)


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("mode", ["on", "required"])
def test_one_port_serves_tls_and_plaintext_only_when_on(pki, tmp_path, loop, mode):
    material = _material(pki, tmp_path, mode)
    ca, _ = pki

    async def scenario() -> tuple[bytes, bytes, SniffingListener]:
        listener = SniffingListener(
            Echo,
            lambda: material.contexts.public_server,
            plaintext=material.takes_plaintext("http"),
        )
        await listener.start("127.0.0.1", 0)
        try:
            over_tls = await _exchange(listener.port, client_context(ca.cert))
            plain = await _exchange(listener.port, None)
        finally:
            listener.close()
            await listener.wait_closed()
        return over_tls, plain, listener

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        over_tls, plain, listener = runner.run(scenario())
    assert over_tls == b"tls:PING\n"
    if mode == "on":
        assert plain == b"plain:PING\n"
        assert (listener.tls_connections, listener.plain_connections) == (1, 1)
    else:
        assert plain == b""
        assert (listener.tls_connections, listener.plain_refused) == (1, 1)


def test_the_serial_and_expiry_reported_are_the_certificates_own(pki, tmp_path):
    ca, _ = pki
    cert = issue(ca, tmp_path, "node", ["127.0.0.1", "node.example"], 0x1234567890ABCDEF12)
    facts = first_certificate_facts(str(cert.cert))
    shown = subprocess.run(
        ["openssl", "x509", "-in", str(cert.cert), "-noout", "-serial", "-enddate"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    fields = dict(line.split("=", 1) for line in shown.splitlines())
    assert facts.serial == int(fields["serial"], 16) == 0x1234567890ABCDEF12
    assert facts.not_after == ssl.cert_time_to_seconds(fields["notAfter"])
    with pytest.raises(ValueError):
        first_certificate_facts(str(cert.key))


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_silent_connections_are_bounded_and_timed_out(pki, tmp_path, loop):
    material = _material(pki, tmp_path, "required")
    ca, _ = pki

    async def scenario() -> tuple[bytes, bytes, bytes, SniffingListener]:
        listener = SniffingListener(
            Echo,
            lambda: material.contexts.public_server,
            plaintext=False,
            first_byte_timeout_s=1.0,
            max_pending=2,
        )
        await listener.start("127.0.0.1", 0)
        try:
            silent = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(2)]
            # Both silent ones hold the pending slots: a third is closed at accept.
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            third = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
            # The silent ones are closed after first_byte_timeout_s, freeing the slots.
            timed_out = await asyncio.wait_for(silent[0][0].read(100), 10)
            await asyncio.wait_for(silent[1][0].read(100), 10)
            for _, w in silent:
                w.close()
            after = await _exchange(listener.port, client_context(ca.cert))
        finally:
            listener.close()
            await listener.wait_closed()
        return third, timed_out, after, listener

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        third, timed_out, after, listener = runner.run(scenario())
    assert (third, timed_out) == (b"", b"")
    assert listener.pending_refused == 1
    assert after == b"tls:PING\n"


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_listener_out_of_descriptors_accepts_again_once_there_are_some(pki, tmp_path, loop):
    material = _material(pki, tmp_path, "required")
    ca, _ = pki
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> tuple[int, bytes]:
        listener = SniffingListener(Echo, lambda: material.contexts.public_server, plaintext=False)
        await listener.start("127.0.0.1", 0)
        client = socket.socket()
        client.setblocking(False)
        try:
            # No descriptor left for accept(): the connection waits in the backlog.
            resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
            try:
                await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", listener.port))
                await wait_for_async(lambda: listener.accept_failures > 0, 10, "EMFILE")
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            reader, writer = await asyncio.open_connection(
                sock=client, ssl=client_context(ca.cert), server_hostname="127.0.0.1"
            )
            writer.write(b"PING\n")
            answer = await asyncio.wait_for(reader.read(100), 10)
            writer.close()
        finally:
            listener.close()
            await listener.wait_closed()
        return listener.accept_failures, answer

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        failures, answer = runner.run(scenario())
    assert failures >= 1
    assert answer == b"tls:PING\n"


def _lowest_free_fd() -> int:
    """A descriptor limit this low leaves no number free for a new descriptor (EMFILE)."""
    used = {int(name) for name in os.listdir("/proc/self/fd")}
    return next(n for n in range(len(used) + 2) if n not in used)
