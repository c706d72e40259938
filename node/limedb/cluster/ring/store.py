"""The ring record on disk: data_dir/ring.json, replaced atomically and durably.

A node that restarts reads its ring (and any running transition) back from here instead of
rebuilding one from the static member list, so a transition survives the restart of every
node. It is written as every small record is (limedb.cluster.record_file: a crash leaves the old
record or the new one, never a torn one).
"""

from __future__ import annotations

from pathlib import Path

from limedb.cluster.record_file import RecordFile
from limedb.cluster.ring.record import RingRecord

RING_FILE = "ring.json"


class RingStore(RecordFile[RingRecord]):
    """Loads and saves one node's copy of the ring record.

    A record that does not decode is an error, not a fresh start: starting from the static
    member list instead could take ownership this node no longer has.
    """

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(
            Path(data_dir) / RING_FILE, "ring record", RingRecord.from_record, RingRecord.to_record
        )
