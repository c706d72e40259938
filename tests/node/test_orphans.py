"""A pytest killed without teardown leaves no node running: children started through the
harness get SIGKILL when their parent goes (tests/support/orphans.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.wait import wait_for

pytestmark = pytest.mark.process

TESTS = Path(__file__).resolve().parents[1]
PARENT = """
import subprocess, sys
from support.orphans import die_with_parent
child = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
sys.stdin.read()
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_dies_when_the_process_that_started_it_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not alive(child), 10, f"the child {child} to die with its parent")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
