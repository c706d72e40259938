"""A real small disk for a node: a tmpfs mounted as its data directory, filled and freed at will.

`SmallDisk(path, size_bytes)` mounts a tmpfs of that size at `path` (needs root); `fill()` takes
every free byte with a ballast file, `free()` deletes it, `unmount()` (also the context manager's
exit) unmounts it, lazily if a process still has files open there. Mount it before the node
starts (a node inside a network namespace then sees it too); fill and free any time after.
Mounts are tagged with the source name `limedb-diskfull-<pid>` (the pid of the test process that
made them), so `sweep()` can unmount the leftovers of a crashed run without touching the disks of
a run still going on (whose nodes would then write to the directory underneath), and `fill()`
refuses a disk that is not mounted (it would fill the real disk underneath).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from support.netns import pid_alive

SOURCE = "limedb-diskfull"
BALLAST = ".ballast"
_CHUNKS = (1 << 20, 64 << 10, 4 << 10, 512)


def available() -> str | None:
    """None when tmpfs mounts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if not Path("/proc/self/mountinfo").exists():
        return "no /proc/self/mountinfo"
    return None


def _mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every mount of this mount namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        source = right.split()[1] if len(right.split()) > 1 else ""
        # mountinfo escapes spaces and friends as octal (\040).
        point = fields[4].encode().decode("unicode_escape")
        out.append((point, source))
    return out


def _owner(source: str) -> int | None:
    """The pid of the process that mounted a small disk with this source, 0 for an untagged
    one, None for a mount that is not a small disk."""
    if source == SOURCE:
        return 0
    prefix, _, pid = source.rpartition("-")
    return int(pid) if prefix == SOURCE and pid.isdigit() else None


def is_mounted(path: Path) -> bool:
    target = str(Path(path).resolve())
    return any(point == target and _owner(source) is not None for point, source in _mounts())


def sweep() -> list[str]:
    """Unmount every tmpfs a crashed run left behind (its process is gone); returns their
    mount points."""
    points = [
        point
        for point, source in _mounts()
        if (owner := _owner(source)) is not None and not (owner and pid_alive(owner))
    ]
    for point in reversed(points):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    return points


class SmallDisk:
    """A tmpfs of `size_bytes` at `path` (created if missing), with a removable ballast file."""

    def __init__(self, path: Path, size_bytes: int = 16 << 20) -> None:
        self.path = Path(path)
        self.size_bytes = size_bytes
        self.mounted = False

    @property
    def ballast(self) -> Path:
        return self.path / BALLAST

    def mount(self) -> SmallDisk:
        reason = available()
        if reason is not None:
            raise RuntimeError(f"cannot mount a small disk: {reason}")
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_bytes},mode=0755",
                f"{SOURCE}-{os.getpid()}",
                self.path,
            ],  # fmt: skip
            check=True,
            capture_output=True,
        )
        self.mounted = True
        return self

    def free_bytes(self) -> int:
        """Bytes an unprivileged write could still take (statvfs f_bavail)."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int = 0) -> int:
        """Grow the ballast until at most `leave_bytes` are free (0: until the disk refuses a
        single byte more); returns the ballast's size."""
        if not is_mounted(self.path):
            raise RuntimeError(
                f"{self.path} is no longer a small disk: filling it would fill the disk underneath"
            )
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in _CHUNKS:
                block = b"\xa5" * chunk
                while self.free_bytes() - chunk >= leave_bytes:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            if leave_bytes == 0:
                # tmpfs counts whole pages: top up byte by byte until the last page is used.
                while True:
                    try:
                        if os.write(fd, b"\xa5" * 64) == 0:
                            break
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def free(self) -> None:
        """Delete the ballast: the space it held is free again at once."""
        try:
            self.ballast.unlink()
        except FileNotFoundError:
            pass

    def unmount(self) -> None:
        """Unmount (lazily, so a still-running process cannot make it fail); idempotent."""
        if not self.mounted:
            return
        result = subprocess.run(["umount", self.path], check=False, capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", self.path], check=True, capture_output=True)
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()
