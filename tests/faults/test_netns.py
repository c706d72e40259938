"""The network lab the fault tests stand on: namespaces reach each other over the bridge, a
partition cuts a node off and heal restores it, packet loss drops about the asked share, and
nothing is left behind, not even after a crashed run."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from support import netns
from support.wait import wait_for

pytestmark = pytest.mark.faults

PORT = 8000


# The host ends of pod veths that the CNI bridge plugin adds and removes in this namespace
# whenever the Kubernetes tier (the other lane of `make test`) starts or stops a pod. The lab
# names its links eth0 and p<i>, inside its own namespaces, never like these.
CNI_VETH = re.compile(r"veth[0-9a-f]{8}")


def root_links() -> set[str]:
    """The links of the test's own namespace, other than pod veths (CNI_VETH)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {name for name in names if not CNI_VETH.fullmatch(name)}


def serve_http(lab: netns.NetLab, ns: netns.Namespace, tmp_path) -> None:
    ns.popen(
        [sys.executable, "-m", "http.server", "--bind", ns.address, str(PORT)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: lab.hub.can_connect(ns.address, PORT), 10, f"http.server in {ns.name}")


def http_get(src: netns.Namespace, address: str, timeout_s: float = 1.0) -> int | None:
    """Status of GET / from inside `src`, None when unreachable."""
    result = src.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", str(timeout_s),
         f"http://{address}:{PORT}/"],
        check=False,
    )  # fmt: skip
    return int(result.stdout) if result.returncode == 0 else None


@pytest.fixture
def three(netlab, tmp_path) -> list[netns.Namespace]:
    nodes = [netlab.add_node() for _ in range(3)]
    for ns in nodes:
        serve_http(netlab, ns, tmp_path)
    return nodes


def test_every_namespace_reaches_every_other_over_the_bridge(netlab, three):
    for src in [netlab.hub, *three]:
        for dst in three:
            assert http_get(src, dst.address) == 200, f"{src.label} -> {dst.label}"


def test_partition_cuts_a_node_off_both_ways_and_heal_restores_it(netlab, three):
    a, b, c = three
    netlab.partition(c)
    for src in (netlab.hub, a, b):
        assert http_get(src, c.address) is None, f"{src.label} still reaches {c.label}"
    assert http_get(c, a.address) is None and http_get(c, b.address) is None
    assert http_get(a, b.address) == 200 and http_get(netlab.hub, a.address) == 200
    assert http_get(c, c.address) == 200, "a partitioned node still reaches itself"
    netlab.heal(c)
    for src in (netlab.hub, a, b):
        assert http_get(src, c.address) == 200
    assert http_get(c, a.address) == 200


def test_partition_can_cut_a_node_from_its_peers_only(netlab, three):
    a, b, c = three
    netlab.partition(c, others=[a, b])
    assert http_get(a, c.address) is None and http_get(c, b.address) is None
    assert http_get(netlab.hub, c.address) == 200, "the client still reaches it"
    netlab.heal()
    assert http_get(a, c.address) == 200


def udp_delivery(sender: netns.Namespace, receiver: netns.Namespace, count: int) -> int:
    """How many of `count` datagrams from `sender` arrive at `receiver`."""
    received = 0
    ready = threading.Event()
    done = threading.Event()

    def receive() -> None:
        nonlocal received
        with receiver.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            sock.bind((receiver.address, 9999))
            sock.settimeout(0.5)
            ready.set()
            while True:
                try:
                    sock.recv(64)
                    received += 1
                except TimeoutError:
                    if done.is_set():  # half a second of silence after the last send
                        return

    thread = threading.Thread(target=receive)
    thread.start()
    assert ready.wait(5)
    with sender.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(i.to_bytes(4, "big"), (receiver.address, 9999))
            if i % 100 == 99:
                time.sleep(0.002)  # pacing, so that no queue on the way overflows
    done.set()
    thread.join(10)
    return received


def test_packet_loss_drops_about_the_asked_share(netlab):
    a, b = netlab.add_node(), netlab.add_node()
    count = 2000
    assert udp_delivery(a, b, count) == count, "without loss every datagram arrives"
    netlab.drop(b, 30)
    lost = 1 - udp_delivery(a, b, count) / count
    assert 0.22 <= lost <= 0.38, f"asked for 30% loss, measured {lost:.1%}"
    netlab.heal(b)
    assert udp_delivery(a, b, count) == count


def test_nothing_is_left_behind_after_close_even_with_processes_running(netns_ready, tmp_path):
    links_before = root_links()
    with netns.NetLab() as lab:
        nodes = [lab.add_node() for _ in range(3)]
        procs = [
            ns.popen([sys.executable, "-m", "http.server", "--bind", ns.address, str(PORT)],
                     cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for ns in nodes
        ]  # fmt: skip
        lab.partition(nodes[0])
        assert len(lab.names()) == 4
    assert lab.names() == []
    assert all(p.poll() is not None for p in procs), "processes of the lab were stopped"
    assert root_links() == links_before, "the lab never touches the test's own namespace"


def test_sweep_removes_what_a_crashed_run_left_and_spares_live_runs(netns_ready):
    dead_pid = subprocess.Popen(["true"])  # a pid that no longer runs
    dead_pid.wait()
    crashed = f"{netns.PREFIX}-{dead_pid.pid}-0-n0"
    subprocess.run(["ip", "netns", "add", crashed], check=True)
    orphan = subprocess.Popen(
        ["ip", "netns", "exec", crashed, "sleep", "600"], start_new_session=True
    )
    try:
        with netns.NetLab() as live:
            removed = netns.sweep()
            assert crashed in removed
            assert live.names(), "a lab of a running process is not swept"
        assert crashed not in netns.namespaces()
        assert orphan.wait(5) == -9, "the orphan process of the crashed run was killed"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        subprocess.run(["ip", "netns", "del", crashed], capture_output=True)
