"""What a verification is: the token ranges to check, the record of one run, and its file.

A verification compares the Merkle roots of every current replica of some token ranges (the
ranges a finished transition moved, or every range of the ring) and repairs the differences;
limedb.cluster.verifier runs it. This module holds the pure parts: which ranges and replica
sets a verification covers (`transition_pieces`, `ring_pieces`), the outcome of a run
(`outcome`), the record reported everywhere (`Verification`, camelCase keys as the operator
publishes them in `status.lastVerification`), and where a node keeps the newest record it
knows (`VerificationStore`: data_dir/verification.json, replaced atomically and durably).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from limedb.cluster.keys import split_wrapping
from limedb.cluster.record_file import RecordFile
from limedb.cluster.ring.placement import Ring
from limedb.cluster.transitions import Phase, Transition

VERIFICATION_FILE = "verification.json"
OK, REPAIRED, FAILED = "ok", "repaired", "failed"
RESULTS = (OK, REPAIRED, FAILED)


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens start..end (inclusive, never wrapping) and every replica that must hold them."""

    start: int
    end: int
    replicas: tuple[str, ...]


class NothingToVerify(ValueError):
    """The asked epoch has no known transition to verify; the message says which there is."""


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Adjacent pieces with the same replicas as one: one root per replica instead of many."""
    out: list[Piece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if last is not None and last.end + 1 == piece.start and last.replicas == piece.replicas:
            out[-1] = Piece(last.start, piece.end, last.replicas)
        else:
            out.append(piece)
    return out


def transition_pieces(t: Transition) -> list[Piece]:
    """The ranges whose owners `t` changed, with their replicas in its new ring."""
    if t.phase is not Phase.DONE:
        raise NothingToVerify(f"transition {t.id} is {t.phase.value}, not done")
    moves = sorted(t.moves, key=lambda m: m.start)
    return _merged([Piece(m.start, m.end, m.new_replicas) for m in moves if m.new_replicas])


def ring_pieces(ring: Ring, rf: int) -> list[Piece]:
    """Every range of the ring with its replicas, split where it wraps, in token order."""
    pieces = [
        Piece(lo, hi, ring.replicas(r.end, rf))
        for r in ring.ranges()
        for lo, hi in split_wrapping(r.start, r.end)
    ]
    return _merged(sorted(pieces, key=lambda p: p.start))


def pieces_for_epoch(
    ring: Ring, rf: int, last: Transition | None, epoch: int | None
) -> tuple[int, list[Piece], Transition | None]:
    """(epoch, pieces, transition) to verify: every range of the committed ring when `epoch` is
    None, else the ranges the transition that made `epoch` moved (only the latest transition
    is known: the ring record keeps no older one)."""
    if epoch is None:
        return ring.epoch, ring_pieces(ring, rf), None
    if last is None or last.phase is not Phase.DONE or last.new_ring.epoch != epoch:
        known = (
            f"the last transition ({last.id}) made epoch {last.new_ring.epoch}"
            if last is not None and last.phase is Phase.DONE
            else "no finished transition is known"
        )
        raise NothingToVerify(
            f"no transition to verify at epoch {epoch}: {known}; "
            "without --epoch every range of the current ring is verified"
        )
    return epoch, transition_pieces(last), last


def outcome(unchecked: int, still_differing: int, repaired: int, error: str | None) -> str:
    """ok: every replica agreed; repaired: some differed and are equal now; failed: some range
    could not be compared (a replica unreachable) or still differs after repair."""
    if unchecked or still_differing or error:
        return FAILED
    return REPAIRED if repaired else OK


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Verification:
    """One finished verification, as every node keeps, serves and pushes it (`to_record`:
    camelCase, the names `status.lastVerification` and `limedb admin verify --json` show)."""

    epoch: int
    result: str
    ranges_checked: int
    ranges_repaired: int
    keys_repaired: int
    started_at: str
    finished_at: str
    finished_ms: int
    node: str  # the node that ran it
    trigger: str  # "transition" or "on-demand"
    transition: str | None = None  # the id of the transition it verified
    change: str | None = None
    ranges_total: int = 0
    ranges_differing: int = 0  # ranges whose roots differed (before any repair)
    replicas_unreachable: tuple[str, ...] = ()
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """`limedb admin verify`'s exit code: 0 ok, 1 repaired, 2 could not check."""
        return {OK: 0, REPAIRED: 1}.get(self.result, 2)

    def newer_than(self, other: Verification | None) -> bool:
        return other is None or (self.finished_ms, self.node) > (other.finished_ms, other.node)

    def to_record(self) -> dict:
        record = {_camel(f.name): getattr(self, f.name) for f in fields(self)}
        record["replicasUnreachable"] = list(self.replicas_unreachable)
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> Verification:
        try:
            values = {
                f.name: record[_camel(f.name)] for f in fields(cls) if _camel(f.name) in record
            }
            values["replicas_unreachable"] = tuple(values.get("replicas_unreachable") or ())
            made = cls(**values)
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"bad verification record: {exc}") from exc
        if made.result not in RESULTS:
            raise ValueError(f"bad verification record: result {made.result!r}")
        return made


class VerificationStore(RecordFile[Verification]):
    """The newest verification this node knows of, on disk so it survives a restart."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(
            Path(data_dir) / VERIFICATION_FILE,
            "verification record",
            Verification.from_record,
            Verification.to_record,
        )
