"""Pure: the database's verification record -> `status.lastVerification` and its event.

The node that drove a transition verifies it (limedb.cluster.verifier) and every node keeps
the newest record; `admin_status()` carries it as `verification.last`. The operator
publishes `{epoch, rangesChecked, rangesRepaired, keysRepaired, result, finishedAt}` and posts
one event per new record: Normal `Verified` when every replica agreed, Warning
`VerificationRepaired` when replicas differed and were repaired, Warning `VerificationFailed`
when a range could not be compared. A record is new when its epoch or finishedAt differ from
what status shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FIELDS = ("epoch", "rangesChecked", "rangesRepaired", "keysRepaired", "result", "finishedAt")
RESULTS = ("ok", "repaired", "failed")


def from_admin_status(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest verification a node reports in admin_status(), as status shows it (plus
    `finishedMs` to order records of several nodes); None when it reports none."""
    last = (raw.get("verification") or {}).get("last")
    if not isinstance(last, Mapping) or last.get("result") not in RESULTS:
        return None
    try:
        view = {
            "epoch": int(last["epoch"]),
            "rangesChecked": int(last["rangesChecked"]),
            "rangesRepaired": int(last["rangesRepaired"]),
            "keysRepaired": int(last["keysRepaired"]),
            "result": str(last["result"]),
            "finishedAt": str(last["finishedAt"]),
        }
        return {**view, "finishedMs": int(last.get("finishedMs") or 0)}
    except (KeyError, TypeError, ValueError):
        return None


def newest(records: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Of what several nodes report, the record finished last."""
    known = [dict(r) for r in records if r is not None]
    return max(known, key=lambda r: (r.get("finishedMs", 0), r["finishedAt"]), default=None)


def published(observed: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> Any:
    """`status.lastVerification`: the observed record (status fields only), else what status
    held (no node answered this tick, or none has verified anything yet)."""
    if observed is None:
        return dict(old) if old else None
    return {k: observed[k] for k in FIELDS}


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.get("epoch"), a.get("finishedAt")) == (b.get("epoch"), b.get("finishedAt"))


def event(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[str, str, str] | None:
    """The event for a record status did not show yet: (type, reason, message), else None."""
    if new is None or _same(old, new):
        return None
    counts = (
        f"epoch {new['epoch']}: {new['rangesChecked']} ranges checked, "
        f"{new['rangesRepaired']} repaired, {new['keysRepaired']} keys repaired"
    )
    if new["result"] == "ok":
        return ("Normal", "Verified", f"every replica agrees after {counts}")
    if new["result"] == "repaired":
        return ("Warning", "VerificationRepaired", f"replicas differed and were repaired: {counts}")
    return (
        "Warning",
        "VerificationFailed",
        f"some ranges could not be compared ({counts}); see limedb admin verify",
    )
