"""A network lab for fault tests: one network namespace per node on a private bridge, with
nftables partitions and packet loss, and cleanup that survives failed and interrupted runs.

Everything lives in namespaces the lab creates; the test's own (root) namespace gets no
interface, address or route. A "hub" namespace holds the bridge and the client address
10.213.0.1; node i gets 10.213.0.(10 + i) on a veth whose other end is a bridge port in the hub.
Test code reaches the nodes by entering the hub for one thread (`with lab.hub.entered():`) or
by running a command there (`lab.hub.run([...])`).

Names are `ltf-<pid>-<lab>-<label>`: the pid of the test process that made them, so that
`sweep()` can remove what a crashed run left behind (its pid no longer exists) without
touching the namespaces of a run still going on.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

PREFIX = "ltf"
SUBNET = "10.213.0"
HUB_ADDRESS = f"{SUBNET}.1"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([a-z0-9]+)$")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lab_numbers = itertools.count()
_TABLE = "limedb_faults"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    """Names of every network namespace on the machine."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def available() -> str | None:
    """None when this machine can run the lab, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed (run scripts/system-deps.sh)"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a sweep keeps what a live run made)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(name: str) -> None:
    out = _ip("netns", "pids", name, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep() -> list[str]:
    """Delete lab namespaces whose creating process is gone (and what still runs in them)."""
    removed = []
    for name in namespaces():
        match = _NAME.match(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        _kill_namespace_processes(name)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


@dataclass
class Namespace:
    """One namespace of a lab; `address` is its IPv4 address on the lab's bridge."""

    name: str
    label: str
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, argv: Sequence[str], timeout: float = 30, check: bool = True, **kwargs):
        """Run a command inside the namespace and wait for it."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in {self.name}: {result.stderr.strip()}")
        return result

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a process inside the namespace; the lab kills it at close."""
        # `ip netns exec` execs the command, so the pid is the command's own.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], start_new_session=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Put the calling thread (only) into this namespace: sockets it opens live here."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                raise NetnsError(f"setns({self.name}): {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                if _libc.setns(own, _CLONE_NEWNET) != 0:
                    # A thread stuck in the lab would leak test traffic into it; stop here.
                    raise NetnsError(f"cannot leave {self.name}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
            os.close(own)

    def can_connect(self, address: str, port: int, timeout_s: float = 1.0) -> bool:
        """Whether a TCP connection from this namespace to address:port succeeds."""
        with self.entered():
            try:
                with socket.create_connection((address, port), timeout=timeout_s):
                    return True
            except OSError:
                return False

    def nft(self, script: str) -> None:
        self.run(["nft", "-f", "-"], input=script)

    def stop_processes(self, timeout_s: float = 5.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


class NetLab:
    """A hub namespace with a bridge, and node namespaces plugged into it.

    Use as a context manager (or call `close()`); `close()` also runs at interpreter exit, so
    an interrupted test leaves nothing behind, and `sweep()` catches what a killed run left.
    """

    def __init__(self) -> None:
        reason = available()
        if reason is not None:
            raise NetnsError(reason)
        self.prefix = f"{PREFIX}-{os.getpid()}-{next(_lab_numbers)}"
        self.nodes: list[Namespace] = []
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.close)
        try:
            self.hub = self._create("hub", HUB_ADDRESS)
            self.hub.run(["ip", "link", "add", "br0", "type", "bridge"])
            self.hub.run(["ip", "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0"])
            self.hub.run(["ip", "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise

    def _create(self, label: str, address: str) -> Namespace:
        name = f"{self.prefix}-{label}"
        _ip("netns", "add", name)
        ns = Namespace(name, label, address)
        ns.run(["ip", "link", "set", "lo", "up"])
        # Every namespace gets the fault table up front; faults only add rules to it.
        ns.nft(
            f"table inet {_TABLE} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"
        )
        return ns

    def add_node(self, label: str | None = None) -> Namespace:
        """A new namespace on the bridge at 10.213.0.(10 + i)."""
        index = len(self.nodes)
        label = label or f"n{index}"
        if not re.fullmatch(r"[a-z0-9]{1,8}", label) or label == "hub":
            raise ValueError(f"bad namespace label {label!r}")
        address = f"{SUBNET}.{10 + index}"
        ns = self._create(label, address)
        self.nodes.append(ns)
        port = f"p{index}"
        # Both ends are created directly inside their namespaces: nothing appears in ours.
        _ip("link", "add", "eth0", "netns", ns.name, "type", "veth",
            "peer", "name", port, "netns", self.hub.name)  # fmt: skip
        self.hub.run(["ip", "link", "set", port, "master", "br0"])
        self.hub.run(["ip", "link", "set", port, "up"])
        ns.run(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        ns.run(["ip", "link", "set", "eth0", "up"])
        return ns

    def namespace_of(self, address: str) -> Namespace:
        return next(ns for ns in [self.hub, *self.nodes] if ns.address == address)

    # ------------------------------------------------------------------ faults

    def partition(self, ns: Namespace, others: Sequence[Namespace] | None = None) -> None:
        """Drop every packet between `ns` and `others` (default: every other namespace of the
        lab, the hub included), both ways, by rules inside `ns`."""
        others = [o for o in (others or [self.hub, *self.nodes]) if o is not ns]
        if not others:
            return
        addresses = ", ".join(o.address for o in others)
        ns.nft(
            f"add rule inet {_TABLE} input ip saddr {{ {addresses} }} drop\n"
            f"add rule inet {_TABLE} output ip daddr {{ {addresses} }} drop\n"
        )

    def partition_one_way(self, ns: Namespace, others: Sequence[Namespace]) -> None:
        """Drop what `others` send to `ns` while what `ns` sends still arrives (rules in `ns`):
        a one-way link, where `ns` talks but never hears back."""
        addresses = ", ".join(o.address for o in others if o is not ns)
        if addresses:
            ns.nft(f"add rule inet {_TABLE} input ip saddr {{ {addresses} }} drop\n")

    def drop(self, ns: Namespace, percent: int) -> None:
        """Drop `percent` % of the packets arriving at `ns` (loopback excluded), at random."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        ns.nft(
            f'add rule inet {_TABLE} input iifname != "lo" numgen random mod 100 < {percent} drop\n'
        )

    def heal(self, ns: Namespace | None = None) -> None:
        """Remove every fault rule from `ns` (default: from every namespace of the lab)."""
        for target in [ns] if ns is not None else [self.hub, *self.nodes]:
            target.nft(f"flush chain inet {_TABLE} input\nflush chain inet {_TABLE} output\n")

    # ------------------------------------------------------------------ cleanup

    def names(self) -> list[str]:
        return [n for n in namespaces() if n.startswith(self.prefix + "-")]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        for ns in [*self.nodes, *([self.hub] if hasattr(self, "hub") else [])]:
            ns.stop_processes()
        for name in self.names():
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
