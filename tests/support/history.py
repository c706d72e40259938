"""A history checker: records every client operation with its outcome and judges the result.

LimeDB resolves conflicts last-writer-wins on HLC timestamps and is not linearizable, so the
checker asks what the design promises instead:

- no acknowledged write is lost: after the cluster settles, every key holds the value of an
  operation that no acknowledged operation strictly followed;
- no read returns a value that nobody tried to write;
- deleted keys stay deleted: a key whose last acknowledged operation is a delete reads absent
  (unless a later, unacknowledged write may have landed);
- optionally (quorum reads) no read returns a value that an acknowledged operation had already
  superseded before the read began.

Every operation has an interval [start, end] on the client's monotonic clock; an operation
whose outcome is unknown (timeout, connection lost, 503 after partial success) may have taken
effect, so it stays a candidate, and an operation timed out on the client side has no end.
"One operation strictly follows another" means it started `slack_s` after the other ended,
which covers the millisecond resolution of the HLC across nodes sharing this machine's clock.
Values must be unique per write so that a read identifies the write it saw.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

OK = "ok"  # acknowledged
FAIL = "fail"  # definitely not applied (e.g. 400, or refused before any replica was touched)
UNKNOWN = "unknown"  # may or may not have been applied

WRITE = "write"
DELETE = "delete"
READ = "read"


@dataclass
class Op:
    kind: str
    key: str
    value: bytes | None  # written value; None for deletes; the value read for reads
    start: float
    end: float = math.inf
    outcome: str = UNKNOWN
    node: str = ""


@dataclass
class History:
    """Thread-safe log of operations (threads of a load generator call it concurrently)."""

    slack_s: float = 0.005
    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, kind: str, key: str, value: bytes | None = None, node: str = "") -> Op:
        op = Op(kind, key, value, time.monotonic(), node=node)
        with self._lock:
            self.ops.append(op)
        return op

    @staticmethod
    def finish(
        op: Op, outcome: str, value: bytes | None = None, *, timed_out: bool = False
    ) -> None:
        """Close an operation; a read passes the value it saw (None when absent)."""
        if op.kind == READ:
            op.value = value
        op.outcome = outcome
        # A request the client gave up on may still be applied later: it has no end.
        op.end = math.inf if timed_out else time.monotonic()

    # ------------------------------------------------------------------ queries

    def keys(self) -> set[str]:
        return {op.key for op in self.ops if op.kind != READ}

    def acknowledged(self) -> list[Op]:
        return [op for op in self.ops if op.kind != READ and op.outcome == OK]

    def _mutations_by_key(self) -> dict[str, list[Op]]:
        by_key: dict[str, list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.kind != READ and op.outcome != FAIL:
                by_key[op.key].append(op)
        return by_key

    def allowed_values(
        self,
        key: str,
        start: float = math.inf,
        end: float = math.inf,
        by_key: dict[str, list[Op]] | None = None,
    ) -> set[bytes | None]:
        """The values (None = absent) a read of `key` during [start, end] may return.

        Candidates are mutations begun before the read ended; a candidate is ruled out when an
        acknowledged mutation that finished before the read began strictly followed it.
        `by_key` (from `_mutations_by_key`) saves rescanning the history for every key.
        """
        if by_key is None:
            by_key = self._mutations_by_key()
        mutations = [m for m in by_key.get(key, []) if m.start < end]
        acked = [m for m in mutations if m.outcome == OK and m.end < start]
        latest_acked_start = max((m.start for m in acked), default=-math.inf)
        allowed: set[bytes | None] = {
            m.value if m.kind == WRITE else None
            for m in mutations
            if not latest_acked_start > m.end + self.slack_s
        }
        if not acked:
            allowed.add(None)  # nothing acknowledged yet: the key may still be absent
        return allowed

    # ------------------------------------------------------------------ checks

    def check_reads(self, *, quorum: bool = False) -> list[str]:
        """Problems with reads recorded during the run (empty list = fine)."""
        written: dict[str, set[bytes]] = defaultdict(set)
        for op in self.ops:
            if op.kind == WRITE:
                written[op.key].add(op.value)  # type: ignore[arg-type]
        problems = []
        by_key = self._mutations_by_key() if quorum else {}
        for op in self.ops:
            if op.kind != READ or op.outcome != OK:
                continue
            if op.value is not None and op.value not in written[op.key]:
                problems.append(f"read of {op.key!r} returned {op.value!r}, never written")
            elif quorum and op.value not in self.allowed_values(op.key, op.start, op.end, by_key):
                problems.append(
                    f"read of {op.key!r} at {op.start:.3f} returned {op.value!r}, already "
                    f"superseded by an acknowledged operation"
                )
        return problems

    def check_final(
        self, read: Callable[[str], bytes | None], keys: Iterable[str] | None = None
    ) -> list[str]:
        """Read every key once more (after the cluster settled) and judge the final state."""
        problems = []
        by_key = self._mutations_by_key()
        for key in sorted(keys if keys is not None else self.keys()):
            value = read(key)
            allowed = self.allowed_values(key, by_key=by_key)
            if value not in allowed:
                last = max(
                    (m for m in by_key.get(key, []) if m.outcome == OK),
                    key=lambda m: m.end,
                    default=None,
                )
                what = (
                    "deleted key came back"
                    if last is not None and last.kind == DELETE
                    else "acknowledged write lost"
                )
                problems.append(
                    f"{what}: {key!r} reads {value!r}, allowed {sorted(map(repr, allowed))}"
                )
        return problems

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for op in self.ops:
            counts[f"{op.kind}_{op.outcome}"] += 1
        return dict(counts)
