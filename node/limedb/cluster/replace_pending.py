"""A self-replace this node decided on and has not seen committed, kept across its restarts
(data_dir/replace_pending.json).

A member back on an empty disk adopts the ring record (ring.json) and keeps taking writes while
it waits for the survivors to replace it (limedb.cluster.rejoin). Either makes its next start
look like a node that used its data dir before: killed before its replace committed, it came
back as that member, serving replica reads from a store that never received its ranges. The
decision is written here before the record is adopted, with the transitions seen before it (a
replace of this node among them is an earlier one, not the awaited one), read first at every
start, and removed once the replace has committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from limedb.cluster.record_file import RecordFile, remove_durably

PENDING_FILE = "replace_pending.json"


def _decode(data: Mapping[str, Any]) -> frozenset[str]:
    earlier = data.get("earlier")
    if not isinstance(earlier, list) or not all(isinstance(t, str) for t in earlier):
        raise ValueError("earlier must be a list of transition ids")
    return frozenset(earlier)


def _encode(earlier: frozenset[str]) -> dict[str, Any]:
    return {"earlier": sorted(earlier)}


class PendingReplace(RecordFile[frozenset[str]]):
    """The transition ids seen before the self-replace was decided; no file: none pending."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(Path(data_dir) / PENDING_FILE, "pending self-replace", _decode, _encode)

    def clear(self) -> None:
        remove_durably(self.path)
