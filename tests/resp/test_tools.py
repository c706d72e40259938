"""Debian's redis-cli and redis-benchmark work against a LimeDB node's RESP listener."""

from __future__ import annotations

import re
import subprocess

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
