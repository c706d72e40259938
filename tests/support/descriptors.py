"""File-descriptor limits as a fault: start a node under a small RLIMIT_NOFILE, or change the
limit of a running node, and see how many descriptors it holds.

The soft limit is the one that matters (open/accept fail with EMFILE beyond it); the hard
limit is left where it was, so a lowered limit can always be raised again at run time.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable

from limedb.storage import CrashableMemFS


def nofile_at_start(soft: int) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child starts with at most `soft` descriptors."""

    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def set_nofile(pid: int, soft: int) -> int:
    """Change the descriptor limit of a running process (as `prlimit --pid`); returns the old
    soft limit. Lowering it below what the process holds closes nothing: its next open or
    accept fails with EMFILE."""
    old, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, max(hard, soft)))
    return old


def nofile(pid: int) -> int:
    """The soft descriptor limit of a running process."""
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def open_descriptors(pid: int) -> int:
    """How many descriptors a running process holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class DescriptorLimitedFS(CrashableMemFS):
    """The engine's in-memory file system, where creating a file (whose name ends with `only`,
    when set) fails with EMFILE while `exhausted` is set: descriptors running out under the
    engine, in-process."""

    exhausted = False
    only = ""

    def create(self, path: str):
        if self.exhausted and path.endswith(self.only):
            raise OSError(errno.EMFILE, "Too many open files")
        return super().create(path)
