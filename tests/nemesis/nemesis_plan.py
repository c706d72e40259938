"""The nemesis schedule: a pure function from (seed, minutes) to the faults of a campaign.

Faults come in bags: every bag holds each fault kind exactly once, in an order drawn from the
seed, so any campaign (a CI seed of well under a minute included) covers every kind, and a
longer one repeats the bags. Membership changes are kept valid against the cluster they will
meet (the plan tracks members and RF as the steps would leave them), which makes the targets
of every step, and so the whole schedule, a function of the seed alone: replaying a seed
replays its schedule exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Faults on one node or its links; each lasts `duration_s` and is then healed.
NODE_FAULTS = (
    "kill",  # kill -9, restarted at the end of the step
    "pause",  # SIGSTOP, SIGCONT at the end
    "partition",  # one node (the minority) cut off from the others (the majority)
    "one_way",  # one node hears nothing from its peers, while they still hear it
    "flapping",  # a partition that is made and healed every fraction of a second
    "loss",  # a share of one node's incoming packets dropped
    "clock_step",  # one node's clock stepped by +-2 s
    "clock_jump",  # one node's clock stepped by +-30 s
    "clock_drift",  # one node's clock drifting away, a few ms per 100 ms
    "disk_full",  # one node's data directory (a small tmpfs) filled up
    "fd_limit",  # one node's open-file limit lowered to just above what it holds
)
# Ring changes; each starts a transition that runs on while the next faults strike.
MEMBERSHIP = ("join", "leave", "rf")
KINDS = NODE_FAULTS + MEMBERSHIP

INITIAL_MEMBERS = 3
INITIAL_RF = 3
MAX_MEMBERS = 4  # one spare node joins and leaves: five processes would be too many for CI
MIN_MEMBERS = 3


@dataclass(frozen=True)
class Step:
    """One fault: `kind` from `at_s` (seconds after the workload started) for `duration_s`.
    `params["node"]` is the node it strikes (or the one that joins or leaves): its index in
    the order nodes were started (0-2 the first members, 3 the first to join, ...), chosen
    with `pick` among the members the plan expects at that moment."""

    at_s: float
    kind: str
    duration_s: float
    pick: int
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"t={self.at_s:6.1f}s {self.kind:<11} for {self.duration_s:.1f}s pick={self.pick}{extra}"


@dataclass(frozen=True)
class Plan:
    seed: int
    minutes: float
    steps: tuple[Step, ...]

    @property
    def duration_s(self) -> float:
        return max((s.at_s + s.duration_s for s in self.steps), default=0.0)

    def kinds(self) -> set[str]:
        return {s.kind for s in self.steps}

    def describe(self) -> str:
        return "\n".join(step.describe() for step in self.steps)


def _params(kind: str, rng: random.Random, duration_s: float) -> dict:
    sign = rng.choice((-1, 1))
    if kind == "clock_step":
        return {"offset_s": 2.0 * sign}
    if kind == "clock_jump":
        return {"offset_s": 30.0 * sign}
    if kind == "clock_drift":
        # A drift of 3-6 % (far beyond NTP's worst) moves the clock 0.1-0.3 s per step.
        return {"rate": round(rng.uniform(0.03, 0.06) * sign, 3)}
    if kind == "loss":
        return {"percent": rng.choice((10, 20, 30))}
    if kind == "flapping":
        return {"period_s": round(rng.uniform(0.3, 0.8), 2)}
    if kind == "one_way":
        # Whether the chosen node is the one that stops hearing, or the one nobody hears.
        return {"deaf": rng.choice((True, False))}
    if kind == "fd_limit":
        return {"spare": rng.choice((4, 8, 16))}
    return {}


@dataclass
class _Ring:
    """Members and RF as the planned ring changes leave them."""

    members: int = INITIAL_MEMBERS
    rf: int = INITIAL_RF

    def allows(self, kind: str) -> bool:
        if kind == "join":
            return self.members < MAX_MEMBERS
        if kind == "leave":
            return self.members > MIN_MEMBERS and self.members - 1 >= self.rf
        return True

    def apply(self, kind: str) -> dict:
        if kind == "join":
            self.members += 1
        elif kind == "leave":
            self.members -= 1
        elif kind == "rf":
            self.rf = 2 if self.rf == 3 else 3
            return {"rf": self.rf}
        return {}


def _bag(rng: random.Random, ring: _Ring) -> list[tuple[str, dict]]:
    """Every kind once, shuffled, with the ring changes' parameters; a ring change the ring
    cannot take yet waits for a later slot of the bag (a leave before the join it needs),
    and is dropped only if none fits."""
    pending = list(KINDS)
    rng.shuffle(pending)
    order: list[tuple[str, dict]] = []
    while pending:
        kind = next((k for k in pending if k not in MEMBERSHIP or ring.allows(k)), None)
        if kind is None:
            break
        pending.remove(kind)
        order.append((kind, ring.apply(kind)))
    return order


def _target(kind: str, members: list[int], next_node: int, pick: int) -> int | None:
    """The node a step strikes, and what it does to the planned members (in place)."""
    if kind == "join":
        members.append(next_node)
        return next_node
    if kind == "leave":
        return members.pop(pick % len(members))
    if kind == "rf":
        return None
    # Only odd nodes run on a fake clock (NemesisNode).
    candidates = [m for m in members if m % 2] if kind.startswith("clock") else members
    return candidates[pick % len(candidates)] if candidates else None


def plan(seed: int, minutes: float) -> Plan:
    """The schedule of a campaign of about `minutes` of faults (at least one full bag)."""
    rng = random.Random(seed)
    ring = _Ring()
    budget_s = minutes * 60.0
    steps: list[Step] = []
    members, next_node = list(range(INITIAL_MEMBERS)), INITIAL_MEMBERS
    now = rng.uniform(2.0, 3.0)  # the workload runs healthy first
    while not steps or now < budget_s:
        for kind, params in _bag(rng, ring):
            if kind in MEMBERSHIP:
                # The change runs on in the background; the next fault follows soon.
                duration = round(rng.uniform(1.0, 2.0), 1)
            else:
                duration = round(rng.uniform(2.0, 4.0), 1)
                params = _params(kind, rng, duration)
            pick = rng.randrange(1 << 16)
            node = _target(kind, members, next_node, pick)
            next_node += kind == "join"
            if node is not None:
                params = {**params, "node": node}
            steps.append(Step(round(now, 1), kind, duration, pick, params))
            now += duration + rng.uniform(0.5, 1.5)
    return Plan(seed, minutes, tuple(steps))
