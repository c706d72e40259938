"""The README's quick tour runs as written: every command of every shell block (and the Python
block) of its "Quick tour" section, in order, against the real node that the tour's first
block starts. Where a command's comment shows its output (`# OK`, `# {"value":...}`, `# 1`),
the output must match it (`...` stands for anything); `(exit code 1)` marks the one command
that must fail. Everything runs in a network namespace of its own (`unshare --net`), so that
the tour's fixed ports (8484, 6379) are free whatever else runs on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import limedb
import pytest
from support.wait import wait_for

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Command:
    line: str  # the command as the README writes it (its comment removed)
    comment: str

    @property
    def expected_output(self) -> re.Pattern[str] | None:
        """What the comment says the command prints, if it shows output."""
        shown = re.sub(r"\s*\(exit code \d+\)$", "", self.comment).strip()
        looks_like_output = shown.startswith(("{", "b'")) or re.fullmatch(r"[\w:-]+", shown)
        if not shown or not looks_like_output:
            return None
        pattern = ".*".join(re.escape(part) for part in shown.split("..."))
        return re.compile(pattern)

    @property
    def exit_code(self) -> int:
        found = re.search(r"\(exit code (\d+)\)", self.comment)
        return int(found.group(1)) if found else 0


def quick_tour() -> str:
    text = README.read_text()
    start = text.index("## Quick tour")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def split_comment(line: str) -> tuple[str, str]:
    """`cmd   # comment` -> (cmd, comment); a # inside quotes is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(quick_tour())]


def shell_commands() -> list[Command]:
    commands = []
    for lang, body in blocks():
        if lang != "sh":
            continue
        for raw in body.splitlines():
            line, comment = split_comment(raw)
            if line:
                commands.append(Command(line, comment))
    return commands


@dataclass
class Namespace:
    """A network namespace of its own, held by the tour's node process."""

    holder: subprocess.Popen
    cwd: Path
    env: dict[str, str]

    def run(self, script: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "bash", "-c", script],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


# curl reports an HTTP error status as a failure, so that "succeeds" means a 2xx answer.
STRICT_CURL = 'curl() { command curl --fail-with-body -sS "$@"; }\n'


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[tuple[Namespace, list[Command]]]:
    for tool in ("unshare", "nsenter", "curl", "redis-cli", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (bash scripts/system-deps.sh)")
    if os.geteuid() != 0:
        pytest.fail("the README test needs root for its network namespace (unshare --net)")
    commands = shell_commands()
    serve = commands[0]
    assert " serve " in serve.line, f"the tour should start with a node: {serve.line}"
    (tmp_path / ".venv").symlink_to(VENV_BIN.parent)
    (tmp_path / "photo.jpg").write_bytes(bytes(range(256)) * 64)  # "any file of yours"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIMEDB_")},
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        # The code under test (this checkout), whatever the venv's editable install points at.
        "PYTHONPATH": str(Path(limedb.__file__).resolve().parents[1]),
    }
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - closed at teardown
    holder = subprocess.Popen(
        ["unshare", "--net", "bash", "-c", f"ip link set lo up && exec {serve.line}"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ns = Namespace(holder, tmp_path, env)
    try:

        def ready_or_gone() -> bool:
            if holder.poll() is not None:
                return True
            return ns.run("command curl -sf localhost:8484/readyz", 5).returncode == 0

        wait_for(ready_or_gone, 30, "the tour's node to be ready")
        assert holder.poll() is None, (tmp_path / "node.log").read_text()
        yield ns, commands[1:]
    finally:
        holder.send_signal(signal.SIGTERM)
        try:
            holder.wait(20)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        log.close()


def test_the_quick_tour_has_the_blocks_this_test_runs() -> None:
    langs = [lang for lang, _ in blocks()]
    assert langs.count("sh") >= 4 and "python" in langs, langs
    assert any("/v1/batch" in c.line for c in shell_commands())


def test_every_quick_tour_command_runs_as_written(tour) -> None:
    ns, commands = tour
    for command in commands:
        done = ns.run(STRICT_CURL + command.line)
        output = (done.stdout + done.stderr).strip()
        assert done.returncode == command.exit_code, (
            f"{command.line}\n-> {done.returncode}\n{output}"
        )
        expected = command.expected_output
        if expected is not None:
            assert expected.search(output), f"{command.line}\nprinted {output!r}\nnot {expected}"
    # What the commands left behind: the file the native routes copied back is the original.
    assert (ns.cwd / "copy.jpg").read_bytes() == (ns.cwd / "photo.jpg").read_bytes()

    # The Python block, as written, against the same node.
    (python_block,) = [body for lang, body in blocks() if lang == "python"]
    (ns.cwd / "tour.py").write_text(python_block)
    done = ns.run(f"{sys.executable} tour.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "b'alice'"


def test_readme_settings_table_gives_the_code_defaults() -> None:
    """Every plain default in the README's settings table is the one config.py applies."""
    from limedb import config

    text = README.read_text()
    table = text[text.index("## Configuration") :]
    checked = 0
    for names, shown in re.findall(r"^\| `([^|]+?)` \| [^|]* \| ([^|]+?) \|", table, re.M):
        if not re.fullmatch(r"-?\d+|true|false|none|sync|quorum|info", shown):
            continue  # prose ("127.0.0.1 alone, ..."), described rather than a value
        for name in re.split(r"`, `", names):
            want = config.default(name)
            nothing = want in (None, (), "") and shown == "none"
            assert str(want).lower() == shown.lower() or nothing, (
                f"README says {name} defaults to {shown}; config.py says {want!r}"
            )
            checked += 1
    assert checked >= 15
