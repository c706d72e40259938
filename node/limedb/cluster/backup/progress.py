"""Progress of a backup or restore: files and bytes done out of the total, rate and ETA;
and the pacer that holds uploads and downloads to a byte rate."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0  # already in the bucket (a later backup is incremental)
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_uploaded: int = 0
    keys: int = 0
    keys_total: int = 0  # a restore's estimate (progress then counts keys, not bytes)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add(self, other: Progress) -> None:
        self.files_total += other.files_total
        self.files_done += other.files_done
        self.files_skipped += other.files_skipped
        self.bytes_total += other.bytes_total
        self.bytes_done += other.bytes_done
        self.bytes_uploaded += other.bytes_uploaded
        self.keys += other.keys

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        left = max(self.bytes_total - self.bytes_done, 0)
        eta = None if self.finished is None and rate <= 0 else (left / rate if rate else 0.0)
        fraction = self.bytes_done / self.bytes_total if self.bytes_total else 0.0
        if self.keys_total:
            fraction = self.keys / self.keys_total
            keys_rate = self.keys / elapsed if elapsed > 0 else 0.0
            left_s = max(self.keys_total - self.keys, 0) / keys_rate if keys_rate else None
            eta = 0.0 if self.finished is not None else left_s
        if self.finished is not None:
            eta = 0.0
        return {
            "files_total": self.files_total,
            "files_done": self.files_done,
            "files_skipped": self.files_skipped,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "bytes_uploaded": self.bytes_uploaded,
            "keys": self.keys,
            "keys_total": self.keys_total,
            "elapsed_s": round(elapsed, 3),
            "rate": round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "fraction": round(min(fraction, 1.0), 4),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Progress:
        return cls(
            files_total=body.get("files_total", 0),
            files_done=body.get("files_done", 0),
            files_skipped=body.get("files_skipped", 0),
            bytes_total=body.get("bytes_total", 0),
            bytes_done=body.get("bytes_done", 0),
            bytes_uploaded=body.get("bytes_uploaded", 0),
            keys=body.get("keys", 0),
        )


class Pacer:
    """Holds the bytes of every worker thread together to `bytes_per_s` (0 = unlimited) by
    sleeping in the thread that got ahead (boto3's calls run in worker threads, never on the
    event loop)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._sent = 0

    def pace(self, nbytes: int) -> None:
        if self.bytes_per_s <= 0:
            return
        with self._lock:
            now = time.monotonic()
            if self._sent / self.bytes_per_s < now - self._start - 1.0:
                # Idle time is not credit for a later burst.
                self._start = now - self._sent / self.bytes_per_s
            self._sent += nbytes
            ahead = self._sent / self.bytes_per_s - (now - self._start)
        if ahead > 0:
            time.sleep(ahead)
