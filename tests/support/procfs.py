"""What /proc says about a running process's memory (for tests that bound a node's growth)."""

from __future__ import annotations

from pathlib import Path


def vm_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in KiB: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def growth_kib(pid: int, before: tuple[int, int]) -> int:
    """How much the resident set grew since `before` (= `snapshot(pid)`), peak included."""
    rss, hwm = before
    return max(vm_kib(pid, "VmRSS") - rss, vm_kib(pid, "VmHWM") - hwm)


def snapshot(pid: int) -> tuple[int, int]:
    return vm_kib(pid, "VmRSS"), vm_kib(pid, "VmHWM")
