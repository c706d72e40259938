"""What the nemesis campaign judges besides the History's own checks: TTL keys neither served
long after their expiry nor gone long before it, within bounds widened by the clock offsets
that were in force (the campaign skews clocks on purpose)."""

from __future__ import annotations

import math

from nemesis_faults import Skew
from nemesis_workload import TtlWrite
from support.history import OK, READ, WRITE, History, Op

# Scheduling, replication and the millisecond clocks of one machine stay well within this.
TTL_SLACK_S = 3.0


def skew_bound(skews: list[Skew], start: float, end: float) -> float:
    """The largest clock offset in force at any time within [start, end]."""
    return max((s.offset_s for s in skews if s.start <= end and s.end >= start), default=0.0)


def _ttl_problem(
    write: Op, ttl_s: float, seen: bytes | None, start: float, end: float, bound: float
) -> str | None:
    """Judge one observation of a TTL key, made within [start, end]."""
    if seen is not None and write.end < math.inf and start > write.end + ttl_s + bound:
        late = start - write.end - ttl_s
        return f"{write.key!r} (ttl {ttl_s}s) still served {late:.1f}s after its expiry"
    if (
        seen is None
        and write.outcome == OK
        and start > write.end
        and end < write.start + ttl_s - bound
    ):
        early = write.start + ttl_s - end
        return f"{write.key!r} (ttl {ttl_s}s) gone {early:.1f}s before its expiry"
    return None


def ttl_problems(
    history: History,
    ttl_writes: list[TtlWrite],
    skews: list[Skew],
    final: dict[str, bytes | None],
    final_span: tuple[float, float],
    origin: float = 0.0,
) -> list[str]:
    """Problems with the TTL keys' reads during the run and with their final values (read
    within `final_span`); times are reported in seconds after `origin`."""
    ttls = {w.key: w.ttl_s for w in ttl_writes}
    writes = {op.key: op for op in history.ops if op.kind == WRITE and op.key in ttls}
    problems = []
    for op in history.ops:
        if op.kind == READ and op.outcome == OK and op.key in writes:
            write = writes[op.key]
            bound = TTL_SLACK_S + skew_bound(skews, write.start, op.end)
            problem = _ttl_problem(write, ttls[op.key], op.value, op.start, op.end, bound)
            if problem:
                problems.append(f"read at {op.start - origin:.1f}s via {op.node}: {problem}")
    for key, write in writes.items():
        if key in final:
            bound = TTL_SLACK_S + skew_bound(skews, write.start, final_span[1])
            problem = _ttl_problem(write, ttls[key], final[key], *final_span, bound)
            if problem:
                problems.append(f"final read: {problem}")
    return problems
