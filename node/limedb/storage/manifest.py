"""The MANIFEST: an append-only log of version edits that says which SSTables are live.

Each edit (files added and removed per level, the oldest WAL still needed, the next file number
and the last sequence number) is one framed, checksummed record, encoded as JSON. A table becomes
part of the database only once its edit is fsynced. `CURRENT` names the live MANIFEST and is
replaced with write-temp + fsync + rename + directory fsync.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from .errors import CorruptionError
from .fs import FileSystem
from .sstable import TableMeta
from .wal import encode_frame, scan_frames

CURRENT = "CURRENT"


def manifest_name(file_no: int) -> str:
    return f"MANIFEST-{file_no:06d}"


@dataclass
class VersionEdit:
    log_number: int | None = None
    next_file: int | None = None
    last_seq: int | None = None
    added: list[tuple[int, TableMeta]] = field(default_factory=list)
    removed: list[tuple[int, int]] = field(default_factory=list)  # (level, file_no)

    def encode(self) -> bytes:
        doc: dict = {}
        if self.log_number is not None:
            doc["log_number"] = self.log_number
        if self.next_file is not None:
            doc["next_file"] = self.next_file
        if self.last_seq is not None:
            doc["last_seq"] = self.last_seq
        if self.added:
            doc["add"] = [
                [lvl, m.file_no, m.size, m.entries, m.smallest.hex(), m.largest.hex()]
                for lvl, m in self.added
            ]
        if self.removed:
            doc["remove"] = [[lvl, no] for lvl, no in self.removed]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> VersionEdit:
        doc = json.loads(payload)
        return cls(
            log_number=doc.get("log_number"),
            next_file=doc.get("next_file"),
            last_seq=doc.get("last_seq"),
            added=[
                (lvl, TableMeta(no, size, entries, bytes.fromhex(lo), bytes.fromhex(hi)))
                for lvl, no, size, entries, lo, hi in doc.get("add", [])
            ],
            removed=[(lvl, no) for lvl, no in doc.get("remove", [])],
        )


@dataclass
class ManifestState:
    """The file set described by a MANIFEST after replaying its edits."""

    max_levels: int
    levels: list[dict[int, TableMeta]] = field(default_factory=list)
    log_number: int = 0
    next_file: int = 1
    last_seq: int = 0

    def __post_init__(self) -> None:
        if not self.levels:
            self.levels = [{} for _ in range(self.max_levels)]

    def apply(self, edit: VersionEdit) -> None:
        if edit.log_number is not None:
            self.log_number = edit.log_number
        if edit.next_file is not None:
            self.next_file = max(self.next_file, edit.next_file)
        if edit.last_seq is not None:
            self.last_seq = max(self.last_seq, edit.last_seq)
        for lvl, no in edit.removed:
            self.levels[lvl].pop(no, None)
        for lvl, meta in edit.added:
            self.levels[lvl][meta.file_no] = meta
            self.next_file = max(self.next_file, meta.file_no + 1)

    def snapshot_edit(self) -> VersionEdit:
        return VersionEdit(
            log_number=self.log_number,
            next_file=self.next_file,
            last_seq=self.last_seq,
            added=[(lvl, m) for lvl, files in enumerate(self.levels) for m in files.values()],
        )


def read_current(fs: FileSystem, dirpath: str) -> str | None:
    path = posixpath.join(dirpath, CURRENT)
    if not fs.exists(path):
        return None
    name = fs.read_file(path).decode("ascii", "replace").strip()
    if not name.startswith("MANIFEST-") or "/" in name:
        raise CorruptionError(path, 0, f"CURRENT does not name a MANIFEST: {name!r}")
    return name


def load(
    fs: FileSystem, dirpath: str, name: str, max_levels: int, *, repair: bool
) -> ManifestState:
    path = posixpath.join(dirpath, name)
    if not fs.exists(path):
        raise CorruptionError(path, None, "CURRENT names a MANIFEST that does not exist")
    state = ManifestState(max_levels)
    scan = scan_frames(fs.read_file(path), path, repair=repair)
    if not scan.payloads and not repair:
        # The first record (a snapshot) is fsynced before CURRENT names the file, so it can never
        # be a torn tail: treating it as one would silently forget every table.
        raise CorruptionError(path, 0, "the MANIFEST's first record is damaged or missing")
    for offset, payload in scan.payloads:
        try:
            edit = VersionEdit.decode(payload)
            state.apply(edit)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            if repair:
                break
            raise CorruptionError(path, offset, f"undecodable version edit ({exc})") from None
    return state


class ManifestWriter:
    """Appends edits to a fresh MANIFEST that starts with a snapshot of the whole state."""

    def __init__(self, fs: FileSystem, dirpath: str, file_no: int, state: ManifestState) -> None:
        self._fs = fs
        self.name = manifest_name(file_no)
        self.path = posixpath.join(dirpath, self.name)
        self._file = fs.create(self.path)
        snapshot = encode_frame(state.snapshot_edit().encode())
        self._file.write(snapshot)
        self._file.sync()
        fs.fsync_dir(dirpath)
        tmp = posixpath.join(dirpath, CURRENT + ".tmp")
        f = fs.create(tmp)
        f.write(self.name.encode() + b"\n")
        f.sync()
        f.close()
        fs.rename(tmp, posixpath.join(dirpath, CURRENT))
        fs.fsync_dir(dirpath)
        self._size = len(snapshot)  # ends the last good record
        self.torn = False

    def append(self, edit: VersionEdit) -> None:
        """Write and fsync one edit; only then may the caller make its files visible.

        When that fails (a full disk), the file is cut back to its last good record, so the
        edit is surely not part of the MANIFEST; if even that fails, `torn` says the edit may
        still come back after a crash. Either way the caller starts a fresh MANIFEST before
        the next edit: after a failed fsync this file's page cache is not to be trusted.
        """
        frame = encode_frame(edit.encode())
        try:
            self._file.write(frame)
            self._file.sync()
        except OSError:
            try:
                self._file.truncate(self._size)
            except OSError:
                self.torn = True
            raise
        self._size += len(frame)

    def close(self) -> None:
        self._file.close()
