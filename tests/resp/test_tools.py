"""Debian's redis-cli and redis-benchmark work against a LimeDB node's RESP listener."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import pytest

pytestmark = pytest.mark.redis


def cli(endpoint, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", endpoint.host, "-p", str(endpoint.port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_redis_cli_runs_commands_given_as_arguments(limedb_single) -> None:
    assert cli(limedb_single, "set", "cli:greeting", "hello world") == "OK\n"
    assert cli(limedb_single, "get", "cli:greeting") == "hello world\n"
    assert cli(limedb_single, "incrby", "cli:counter", "41") == "41\n"
    assert cli(limedb_single, "incr", "cli:counter") == "42\n"
    assert cli(limedb_single, "ttl", "cli:counter") == "-1\n"
    assert cli(limedb_single, "get", "cli:missing") == "\n"
    assert "ERR unknown command 'nosuch'" in cli(limedb_single, "nosuch", "x")


def test_redis_cli_reads_a_session_of_commands_from_stdin(limedb_single) -> None:
    session = "\n".join(
        [
            "PING",
            "SET cli:s1 one",
            "APPEND cli:s1 two",
            "GET cli:s1",
            "EXPIRE cli:s1 100",
            "TTL cli:s1",
            "DEL cli:s1 cli:nothing",
            "EXISTS cli:s1",
        ]
    )
    assert cli(limedb_single, stdin=session + "\n").splitlines() == [
        "PONG",
        "OK",
        "6",
        "onetwo",
        "1",
        "100",
        "1",
        "0",
    ]


class Terminal:
    """redis-cli on a pseudo-terminal, as a person at a shell would run it."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "TERM": "dumb"}
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.output = b""

    def read_until(self, marker: bytes, timeout_s: float = 10.0) -> bytes:
        start = len(self.output)
        deadline = time.monotonic() + timeout_s
        while marker not in self.output[start:]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} in {self.output[start:]!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                data = os.read(self.master, 4096)
                self.output += data
                if b"\x1b[6n" in data:  # line editing asks where the cursor is
                    os.write(self.master, b"\x1b[1;1R")
        return self.output[start:]

    def type(self, line: str, marker: bytes) -> str:
        os.write(self.master, line.encode() + b"\r")
        return self.read_until(marker).decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def test_redis_cli_interactive_session_on_a_terminal(limedb_single) -> None:
    prompt = f"{limedb_single.host}:{limedb_single.port}> ".encode()
    term = Terminal(["redis-cli", "-h", limedb_single.host, "-p", str(limedb_single.port)])
    try:
        term.read_until(prompt)
        assert "OK" in term.type("set tty:key 41", prompt)
        assert "(integer) 42" in term.type("incr tty:key", prompt)
        assert '"42"' in term.type("get tty:key", prompt)
        assert "(nil)" in term.type("get tty:missing", prompt)
        assert "ERR unknown command 'nosuch'" in term.type("nosuch", prompt)
        os.write(term.master, b"quit\r")
        assert term.proc.wait(10) == 0
    finally:
        term.close()


def test_redis_cli_info_and_dbsize(limedb_single) -> None:
    info = cli(limedb_single, "info")
    for section in ("# Server", "# Clients", "# Stats", "# Keyspace", "# Cluster"):
        assert section in info
    assert "cluster_enabled:0" in info
    assert int(cli(limedb_single, "dbsize")) >= 0


def test_redis_benchmark_set_get_runs_without_errors(limedb_single) -> None:
    done = subprocess.run(
        ["redis-benchmark", "-h", limedb_single.host, "-p", str(limedb_single.port),
         "-q", "-n", "3000", "-c", "10", "-t", "set,get", "-P", "4"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "error" not in output.lower(), output
    results = dict(re.findall(r"(SET|GET): ([\d.]+) requests per second", output))
    assert set(results) == {"SET", "GET"}, output
    # redis-benchmark's SET stores a 3-byte payload (-d 3) under this literal key.
    assert cli(limedb_single, "strlen", "key:__rand_int__") == "3\n"
