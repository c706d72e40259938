"""Whether the engine refuses writes for lack of space (docs/operations.md "Disk full"), and why.

Three things can be short of room: the WAL (`full`: writes are refused until the syncer has
written the frames that were not durable to a fresh log), a flush and a compaction (`*_blocked`:
they retry with backoff; writes are refused only once they would have to wait for them).
`degraded` says any of the three holds, so that the write path looks closer only then.
Out of file descriptors (EMFILE, ENFILE) is handled the same way, but the writers hear
OutOfDescriptorsError (a 503 to clients, not a 507) and the health says which it is.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .errors import DiskFullError, is_out_of_descriptors, refusal

log = logging.getLogger("limedb.storage")


class DiskFullState:
    def __init__(self, dirpath: str, mutex: threading.Lock, sync_wake: threading.Event) -> None:
        self._dir = dirpath
        self._mutex = mutex
        self._sync_wake = sync_wake  # the syncer retries while the disk is full
        self.full: DiskFullError | None = None
        self.full_since = 0.0
        self.opened_full = False  # opened read-only: the MANIFEST or WAL could not be written
        self.flush_blocked: BaseException | None = None
        self.compaction_blocked: BaseException | None = None
        self.degraded = False
        self.events = 0
        self.refusals = 0

    def enter_locked(self, reason: str, cause: BaseException | None = None) -> DiskFullError:
        """Refuse writes from now on (caller holds the mutex) because of `cause` (the OSError
        met, if any); the error to give the writer."""
        if self.full is None:
            self.full = refusal(f"disk full: {reason}", cause)
            self.full_since = time.time()
            self.events += 1
            self._update_locked()
            self._sync_wake.set()
            lacking = "file descriptors" if is_out_of_descriptors(self.full) else "space"
            log.error("storage in %s is out of %s: %s", self._dir, lacking, reason)
        return refusal(str(self.full), self.full)

    def leave_locked(self) -> None:
        """Writes are accepted again (caller holds the mutex)."""
        self.full = None
        self.opened_full = False
        self._update_locked()

    def note_blocked(self, job: str, exc: BaseException | None) -> None:
        """The flush or compaction thread found the disk full (`exc`), or has room again."""
        with self._mutex:
            if job == "flush":
                was, self.flush_blocked = self.flush_blocked, exc
            else:
                was, self.compaction_blocked = self.compaction_blocked, exc
            self._update_locked()
        if exc is not None and was is None:
            log.error("%s found the disk full, retrying with backoff: %s", job, exc)
        elif exc is None and was is not None:
            log.warning("%s succeeded again after a full disk", job)

    def refuse(self, reason: str, cause: BaseException | None = None) -> DiskFullError:
        """The error for a write refused for lack of space, or of descriptors (counted)."""
        self.refusals += 1
        return refusal(reason, cause)

    def _update_locked(self) -> None:
        self.degraded = (
            self.full is not None
            or self.flush_blocked is not None
            or self.compaction_blocked is not None
        )

    def status(self) -> dict[str, Any]:
        """Whether writes are refused for lack of space, since when and why (for health)."""
        full = self.full
        # Out of descriptors rather than space: what refuses the writes, or blocks a job.
        descriptors = any(
            is_out_of_descriptors(exc)
            for exc in (full, self.flush_blocked, self.compaction_blocked)
        )
        reason = str(full) if full is not None else None
        if reason is None and self.flush_blocked is not None:
            reason = f"memtable flush failed: {self.flush_blocked}"
        if reason is None and self.compaction_blocked is not None:
            reason = f"compaction failed: {self.compaction_blocked}"
        return {
            "disk_full": full is not None and not is_out_of_descriptors(full),
            "out_of_descriptors": descriptors,
            "read_only": full is not None,
            "opened_full": self.opened_full,
            "disk_full_since": self.full_since if full is not None else None,
            "disk_full_reason": reason,
            "flush_blocked": self.flush_blocked is not None,
            "compaction_blocked": self.compaction_blocked is not None,
            "disk_full_events": self.events,
            "disk_full_refused_writes": self.refusals,
        }
