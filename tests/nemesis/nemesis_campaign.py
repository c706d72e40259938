"""One nemesis campaign: start a cluster in a network lab, run the workload while the nemesis
plays the seed's plan, heal everything, let the cluster settle, and judge it.

The judgement: every member serves again; no read returned a value nobody wrote; no
acknowledged write is lost and deleted keys stay deleted (History); TTL keys behave
(nemesis_checks); after repair the owners of every ring range hold identical data (Merkle
trees of their disks). A failing campaign's report starts with the command that replays it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from limedb.client import Client, LimeDBError
from nemesis_checks import ttl_problems
from nemesis_cluster import NemesisFleet
from nemesis_faults import Nemesis
from nemesis_plan import Plan, plan
from nemesis_workload import NemesisWorkload
from support import netns
from support.history import History
from support.netns_nodes import replica_differences
from support.wait import wait_for

SETTLE_S = 120.0


def replay_command(seed: int, minutes: float) -> str:
    return f"make nemesis SEED={seed} MINUTES={minutes:g}"


def history_slack(the_plan: Plan) -> float:
    """How far apart in time two writes must be for the later one to be sure to win: the
    largest clock offset under which a node still stamps writes (LWW on skewed clocks)."""
    offsets = [0.005]
    for step in the_plan.steps:
        if step.kind == "clock_step":
            offsets.append(abs(step.params["offset_s"]))
        elif step.kind == "clock_drift":
            offsets.append(abs(step.params["rate"]) * step.duration_s)
    return max(offsets) + 0.1 * (len(offsets) > 1)


@dataclass
class Result:
    seed: int
    minutes: float
    plan: Plan
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    key_histories: list[str] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        verdict = "FAILED" if self.problems else "passed"
        lines = [
            f"nemesis seed {self.seed} {verdict}; replay: {replay_command(self.seed, self.minutes)}",
            f"timings: {self.timings}",
            f"operations: {self.summary}",
            *(f"PROBLEM: {p}" for p in self.problems[:30]),
            "plan:",
            self.plan.describe(),
            "nemesis log:",
            *self.log,
            *self.key_histories,
        ]
        return "\n".join(lines)


def run(seed: int, minutes: float, root: Path, lab: netns.NetLab) -> Result:
    """Run one campaign in `lab` (data under `root`); the calling thread enters the lab's hub.
    A campaign that cannot even be judged (a node that never comes back, a timeout) is a
    problem of its seed, reported with the replay command like any other."""
    result = Result(seed, minutes, plan(seed, minutes))
    with lab.hub.entered():
        fleet = NemesisFleet(root, lab)
        try:
            _campaign(result, fleet, lab)
        except (AssertionError, httpx.HTTPError, LimeDBError, OSError) as exc:
            result.problems.append(f"campaign aborted: {type(exc).__name__}: {exc}")
        finally:
            fleet.stop(keep_data=bool(result.problems))
    return result


def key_histories(
    history: History, problems: list[str], origin: float, limit: int = 5
) -> list[str]:
    """Every operation on the first keys the problems name (times in seconds after `origin`),
    so that a report says what happened to them."""
    keys = list(dict.fromkeys(re.findall(r"'([kt][0-9-]+)'", " ".join(problems))))[:limit]
    lines = []
    for key in keys:
        lines.append(f"history of {key!r}:")
        lines += [
            f"  {op.start - origin:8.3f}..{op.end - origin:8.3f} {op.kind:<6} {op.outcome:<7} "
            f"{op.value!r} via {op.node}"
            for op in history.ops
            if op.key == key
        ]
    return lines


def _phase(result: Result, name: str, since: float) -> float:
    now = time.monotonic()
    result.timings[name] = round(now - since, 1)
    return now


def _campaign(result: Result, fleet: NemesisFleet, lab: netns.NetLab) -> None:
    t = time.monotonic()
    fleet.bootstrap(3)
    probe = "nemesis-probe"
    for node in fleet.members:
        wait_for(lambda node=node: fleet.serves(node, probe), 60, f"{node.url} to serve")
    t = _phase(result, "start", t)

    history = History(slack_s=history_slack(result.plan))
    load = NemesisWorkload(
        history, [m.url for m in fleet.members], seed=result.seed, resp_password=fleet.resp_password
    )
    nemesis = Nemesis(fleet, lab, load.set_targets)
    result.log = nemesis.log
    load.start()
    try:
        wait_for(lambda: load.acknowledged() >= 50, 60, "50 acknowledged operations")
        nemesis.run(result.plan)
        t = _phase(result, "faults", t)
        nemesis.heal_all()
        for node in fleet.members:
            wait_for(
                lambda node=node: fleet.serves(node, probe),
                SETTLE_S,
                lambda node=node: f"{node.url} to serve after healing\n{node.log_tail()}",
                step_s=0.5,
            )
        healed = time.monotonic()
        wait_for(lambda: load.acknowledged(healed) >= 50, 60, "50 operations after healing")
    finally:
        load.stop()
        result.summary = history.summary()
    result.problems += nemesis.errors
    t = _phase(result, "heal", t)

    fleet.wait_quiet(SETTLE_S)
    # Hints for nodes that left stay pending (until the hint window) and need no replay: the
    # writes they carry reached the new owners during the leave.
    members = {m.url for m in fleet.members}
    for node in fleet.members:
        wait_for(
            lambda node=node, members=members: not members & set(fleet.hints_pending(node)),
            SETTLE_S,
            lambda node=node: f"{node.url} to replay its hints: {fleet.hints_pending(node)}",
        )
        if stale := fleet.hints_pending(node):
            nemesis.note(f"{node.url} keeps hints for nodes that left: {stale}")
    for node in fleet.members:
        with Client(node.url, timeout=120.0, retries=2, cluster_secret=fleet.secret) as client:
            status = client.admin_status()
            nemesis.note(
                f"{node.url}: epoch {status['epoch']} rf {status['replication_factor']} "
                f"members {sorted(m['url'] for m in status['members'] if m['state'] != 'Left')}"
            )
            nemesis.note(f"{node.url} repair: {client.repair()}")
    t = _phase(result, "settle", t)

    result.problems += history.check_reads()
    ttl_keys = sorted({w.key for w in load.ttl_writes})
    regular = sorted(history.keys() - set(ttl_keys))
    final_start = time.monotonic()
    values = fleet.read_all(regular + ttl_keys)
    final_span = (final_start, time.monotonic())
    result.problems += history.check_final(values.__getitem__, regular)
    expiry = ttl_problems(
        history, load.ttl_writes, nemesis.skews, values, final_span, nemesis.started
    )
    if expiry:
        _note_expiry_evidence(fleet, nemesis, [k for k in ttl_keys if k in " ".join(expiry)])
    result.problems += expiry

    result.key_histories = key_histories(history, result.problems, nemesis.started)
    ring, rf = fleet.ring()
    members = list(fleet.members)
    for node in fleet.nodes:
        node.stop()
    result.problems += replica_differences(members, ring, rf)
    _phase(result, "check", t)


def _note_expiry_evidence(fleet: NemesisFleet, nemesis: Nemesis, keys: list[str]) -> None:
    """For a TTL problem: every member's clock as it sees it (its offset from the majority and
    its peers') and what each member holds for the first keys (consistency one: its own
    replica or the nearest), so that the report shows whether an expiry or a clock was off."""
    for node in fleet.members:
        try:
            health = fleet.http.get(f"{node.url}/api/v1/health", timeout=5.0).json()
            clock = health["storage"]["cluster"].get("clock")
            nemesis.note(f"{node.url} clock: {clock}")
        except Exception as exc:  # evidence only: never hide the problem behind this
            nemesis.note(f"{node.url} clock: unavailable ({exc!r})")
    for key in keys[:3]:
        for node in fleet.members:
            try:
                got = fleet.http.get(f"{node.url}/v1/kv/{key}?consistency=one", timeout=5.0)
                expires = got.headers.get("x-limedb-expires-at-ms")
                nemesis.note(
                    f"{key!r} at {node.url} (one): {got.status_code} expires_at_ms={expires} "
                    f"wall_ms={int(time.time() * 1000)}"
                )
            except Exception as exc:
                nemesis.note(f"{key!r} at {node.url}: unavailable ({exc!r})")
