"""The nemesis: runs a plan's steps against a live fleet, each fault applied to the member the
step picks and healed when the step ends, while ring changes run in a thread of their own.

`heal_all()` undoes whatever may still be in force (every rule, pause, kill, clock offset,
ballast and file limit), so the campaign can settle and judge the cluster afterwards. Every
action is logged with its time, and the clock offsets in force are recorded for the TTL check.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from limedb.client import LimeDBError
from nemesis_cluster import NemesisFleet, NemesisNode
from nemesis_plan import MEMBERSHIP, Plan, Step
from support import netns


@dataclass
class Skew:
    """A clock offset of up to `offset_s` (absolute) on one node during [start, end]."""

    start: float
    end: float
    offset_s: float


@dataclass
class Nemesis:
    fleet: NemesisFleet
    lab: netns.NetLab
    on_members: Callable[[list[str]], None]  # told the members' URLs after each ring change
    log: list[str] = field(default_factory=list)
    skews: list[Skew] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _ring_steps: queue.Queue = field(default_factory=queue.Queue)
    started: float = 0.0  # monotonic time of the plan's t=0

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.1f}s {text}")

    # ------------------------------------------------------------------ the run

    def run(self, plan: Plan) -> None:
        """Play every step at its time; returns when the faults are over and the ring thread
        has finished its changes."""
        self.started = time.monotonic()
        ring = threading.Thread(target=self._ring_thread, daemon=True)
        ring.start()
        for step in plan.steps:
            delay = self.started + step.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if step.kind in MEMBERSHIP:
                self._ring_steps.put(step)
            else:
                self._fault(step)
        self._ring_steps.put(None)
        ring.join(600)
        if ring.is_alive():
            self.errors.append("the ring changes did not finish within 10 minutes")

    def _node(self, step: Step) -> NemesisNode | None:
        """The node the plan names, if it was started."""
        index = step.params.get("node")
        nodes = self.fleet.nodes
        return nodes[index] if index is not None and index < len(nodes) else None

    def _target(self, step: Step) -> NemesisNode | None:
        """The planned node, if it runs as a member now (a ring change late or rolled back
        can make the cluster differ from the plan)."""
        node = self._node(step)
        with self.fleet.lock:
            member = node is not None and node in self.fleet.members and node.running()
        return node if member else None

    def _peers(self, node: NemesisNode) -> list[netns.Namespace]:
        return [n.ns for n in self.fleet.nodes if n is not node and n.running()]

    def _fault(self, step: Step) -> None:
        node = self._target(step)
        if node is None:
            self.note(f"{step.kind}: node {step.params.get('node')} is no running member, skipped")
            return
        self.note(f"{step.kind} {node.url} {step.params} for {step.duration_s}s")
        try:
            undo = getattr(self, f"_{step.kind}")(node, step)
            undo()
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be played is reported
            self.errors.append(f"{step.describe()} on {node.url}: {type(exc).__name__}: {exc}")
            self.note(f"{step.kind} failed: {exc}")
            return
        self.note(f"healed {step.kind} {node.url}")

    # ------------------------------------------------------------------ node faults
    # Each applies its fault, waits out the step (or plays it, for the flapping ones) and
    # returns what heals it.

    def _kill(self, node: NemesisNode, step: Step):
        with self.fleet.lock:
            node.kill()
        time.sleep(step.duration_s)

        def restart() -> None:
            with self.fleet.lock:
                if node in self.fleet.members and not node.running():
                    node.start()

        return restart

    def _pause(self, node: NemesisNode, step: Step):
        node.pause()
        time.sleep(step.duration_s)
        return node.resume

    def _partition(self, node: NemesisNode, step: Step):
        self.lab.partition(node.ns, others=self._peers(node))
        time.sleep(step.duration_s)
        return lambda: self.lab.heal(node.ns)

    def _one_way(self, node: NemesisNode, step: Step):
        peers = self._peers(node)
        if step.params["deaf"]:
            self.lab.partition_one_way(node.ns, peers)
        else:
            for peer in peers:
                self.lab.partition_one_way(peer, [node.ns])
        time.sleep(step.duration_s)

        def heal() -> None:
            for ns in (node.ns, *peers):
                self.lab.heal(ns)

        return heal

    def _flapping(self, node: NemesisNode, step: Step):
        end = time.monotonic() + step.duration_s
        period = step.params["period_s"]
        while time.monotonic() < end:
            self.lab.partition(node.ns, others=self._peers(node))
            time.sleep(period)
            self.lab.heal(node.ns)
            time.sleep(period)
        return lambda: self.lab.heal(node.ns)

    def _loss(self, node: NemesisNode, step: Step):
        self.lab.drop(node.ns, step.params["percent"])
        time.sleep(step.duration_s)
        return lambda: self.lab.heal(node.ns)

    def _clock(self, node: NemesisNode, step: Step, offset_s: float) -> Callable[[], None]:
        """Keep the offset in force for the step; record it for the TTL bounds. (Only nodes
        on a fake clock are picked for clock faults.)"""
        skew = Skew(time.monotonic(), float("inf"), abs(offset_s))
        self.skews.append(skew)
        time.sleep(step.duration_s)

        def reset() -> None:
            assert node.clock is not None
            node.clock.set(0.0)
            skew.end = time.monotonic()

        return reset

    def _clock_step(self, node: NemesisNode, step: Step):
        assert node.clock is not None
        node.clock.set(step.params["offset_s"])
        return self._clock(node, step, step.params["offset_s"])

    _clock_jump = _clock_step

    def _clock_drift(self, node: NemesisNode, step: Step):
        assert node.clock is not None
        node.clock.drift(step.params["rate"])
        return self._clock(node, step, step.params["rate"] * step.duration_s)

    def _disk_full(self, node: NemesisNode, step: Step):
        ballast = node.disk.fill()
        self.note(f"  {node.url} disk filled with a {ballast >> 20} MiB ballast")
        time.sleep(step.duration_s)
        return node.disk.free

    def _fd_limit(self, node: NemesisNode, step: Step):
        limit = node.limit_files(step.params["spare"])
        self.note(f"  {node.url} open-file limit {limit}")
        time.sleep(step.duration_s)
        return node.unlimit_files

    # ------------------------------------------------------------------ ring changes

    def _ring_thread(self) -> None:
        while (step := self._ring_steps.get()) is not None:
            try:
                self._ring_change(step)
            except (AssertionError, httpx.HTTPError, LimeDBError, OSError) as exc:
                self.errors.append(f"{step.describe()}: {exc}")
                self.note(f"{step.kind} failed: {exc}")

    def _ring_change(self, step: Step) -> None:
        fleet = self.fleet
        members = fleet.members
        if step.kind == "join" and len(members) < 4:
            node = fleet.start_joiner()
            if node.index != step.params["node"]:
                self.note(
                    f"join: node {node.index} starts where the plan has {step.params['node']}"
                )
            tid, _ = fleet.start_change(lambda c: c.join(node.url))
            self.note(f"join {node.url}: {tid}")
            last = fleet.wait_ended(tid)
            with fleet.lock:
                if last["phase"] == "done":
                    fleet.members.append(node)
                else:
                    node.stop()
        elif (
            step.kind == "leave"
            and len(members) > max(3, fleet.rf)
            and (node := self._node(step)) in members
        ):
            tid, _ = fleet.start_change(lambda c: c.leave(node.url))
            self.note(f"leave {node.url}: {tid}")
            last = fleet.wait_ended(tid)
            if last["phase"] == "done":
                with fleet.lock:
                    fleet.members.remove(node)
                self.on_members([m.url for m in fleet.members])
                with fleet.lock:
                    node.stop()
        elif step.kind == "rf":
            rf = step.params["rf"]
            tid, _ = fleet.start_change(lambda c: c.set_replication_factor(rf))
            self.note(f"rf {rf}: {tid}")
            last = fleet.wait_ended(tid)
            if last["phase"] == "done":
                fleet.rf = rf
        else:
            self.note(f"{step.kind} does not fit {len(members)} members at RF {fleet.rf}: skipped")
            return
        self.note(f"{step.kind} ended {last['phase']}: {last.get('reason')}")
        self.on_members([m.url for m in fleet.members])

    # ------------------------------------------------------------------ healing

    def heal_all(self) -> None:
        """Undo every fault that may still be in force, and restart every stopped member."""
        self.lab.heal()
        with self.fleet.lock:
            for node in self.fleet.nodes:
                if node.clock is not None:
                    node.clock.set(0.0)
                if node.running():
                    node.resume()
                    node.unlimit_files()
                if node.disk.mounted:
                    node.disk.free()
            for node in self.fleet.members:
                if not node.running():
                    node.start()
        self.note("healed everything")
