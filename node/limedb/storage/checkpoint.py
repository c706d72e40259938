"""Checkpoints: a consistent point-in-time copy of an open engine's tables in another directory.

The cut is a flush (storage/flush.py `flush_through`): every write applied before the call,
so every acknowledged one, ends up in a table, and the file set at that instant is pinned
(version_set.py) so that a compaction installed meanwhile cannot delete a table before it is
linked. Writers are never stopped; only flushes wait while the memtable is written out. Each
table is hard-linked into the checkpoint where the filesystem allows it, copied otherwise. The
checkpoint gets its own engine MANIFEST and CURRENT, so it is a valid data directory that
`Engine.open` reads as is, and `CHECKPOINT.json`, written last, listing every table with its
size and SHA-256 (a backup's content address). docs/formats.md describes the layout.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from .context import EngineContext
from .errors import StorageError
from .flush import Flusher
from .fs import FileSystem, RealFS
from .manifest import ManifestState, ManifestWriter
from .sstable import FORMAT_VERSION, TableMeta, TableReader, table_name
from .version_set import Levels, VersionSet

CHECKPOINT_FILE = "CHECKPOINT.json"
CHECKPOINT_FORMAT = 1
# Errors of os.link that mean "not here" (another device, a filesystem without hard links,
# a link count at its maximum), not "something is wrong": the table is copied instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointTable:
    """One table of a checkpoint: its file name in the checkpoint directory, its level in the
    engine's tree, its size in bytes, the SHA-256 of its bytes (hex) and its entry count."""

    name: str
    level: int
    size: int
    sha256: str
    entries: int

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "level": self.level,
            "size": self.size,
            "sha256": self.sha256,
            "entries": self.entries,
        }

    @classmethod
    def from_json(cls, doc: dict) -> CheckpointTable:
        return cls(doc["name"], doc["level"], doc["size"], doc["sha256"], doc["entries"])


@dataclass(frozen=True)
class Checkpoint:
    """What `Engine.checkpoint` made: the directory, its tables, and the cut.

    `last_seq` is the engine's last sequence number at the cut (every write with a smaller or
    equal one is in the tables); `hlc` is an HLC timestamp taken at the cut, newer than every
    write the engine stamped before it; `max_ts` is the newest timestamp stored in the tables;
    `linked` says whether the tables are hard links (False: copies).
    """

    dir: str
    tables: tuple[CheckpointTable, ...]
    last_seq: int
    hlc: int
    max_ts: int
    linked: bool
    format: int = CHECKPOINT_FORMAT
    sstable_format: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(t.size for t in self.tables)

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "sstable_format": self.sstable_format,
            "last_seq": self.last_seq,
            "hlc": self.hlc,
            "max_ts": self.max_ts,
            "linked": self.linked,
            "tables": [t.to_json() for t in self.tables],
        }

    @classmethod
    def from_json(cls, dirpath: str, doc: dict) -> Checkpoint:
        return cls(
            dir=dirpath,
            tables=tuple(CheckpointTable.from_json(t) for t in doc["tables"]),
            last_seq=doc["last_seq"],
            hlc=doc["hlc"],
            max_ts=doc["max_ts"],
            linked=doc["linked"],
            format=doc["format"],
            sstable_format=doc["sstable_format"],
        )


def load_checkpoint(dirpath: str | os.PathLike, fs: FileSystem | None = None) -> Checkpoint:
    """Read back the `CHECKPOINT.json` of a checkpoint directory. A directory without one is
    not a (complete) checkpoint: StorageError."""
    dirpath = os.fspath(dirpath)
    fs = fs or RealFS()
    path = posixpath.join(dirpath, CHECKPOINT_FILE)
    if not fs.exists(path):
        raise StorageError(f"{dirpath} is not a complete checkpoint: {CHECKPOINT_FILE} missing")
    try:
        doc = json.loads(fs.read_file(path))
        if doc.get("format") != CHECKPOINT_FORMAT:
            raise StorageError(f"{path}: unsupported checkpoint format {doc.get('format')!r}")
        return Checkpoint.from_json(dirpath, doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path}: unreadable checkpoint manifest ({exc})") from None


def place_table(fs: FileSystem, src: str, dst: str, link: bool) -> tuple[bool, str | None]:
    """Put the table `src` at `dst`: a hard link if `link` and the filesystem allows it, else a
    fsynced copy. Returns (linked, SHA-256 of the bytes when it was computed by copying)."""
    if link:
        try:
            fs.link(src, dst)
            return True, None
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
    return False, _copy(fs, src, dst)


def _copy(fs: FileSystem, src: str, dst: str) -> str:
    data = fs.open_read(src).data
    digest = hashlib.sha256()
    out = fs.create(dst)
    try:
        for off in range(0, len(data), _COPY_CHUNK):
            chunk = data[off : off + _COPY_CHUNK]
            digest.update(chunk)
            out.write(chunk)
        out.sync()
    finally:
        out.close()
    return digest.hexdigest()


def _sha256(fs: FileSystem, path: str) -> str:
    data = fs.open_read(path).data
    digest = hashlib.sha256()
    for off in range(0, len(data), _COPY_CHUNK):
        digest.update(data[off : off + _COPY_CHUNK])
    return digest.hexdigest()


@dataclass
class _Cut:
    levels: Levels
    pinned: list[int]
    last_seq: int
    next_file: int
    hlc: int


class Checkpointer:
    """Takes checkpoints of one engine (it keeps the table digests between them)."""

    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        flusher: Flusher,
        clock: Callable[[], int],
    ) -> None:
        self._ctx = ctx
        self._versions = versions
        self._flusher = flusher
        self._clock = clock
        # SHA-256 of the tables of the last checkpoint by file number: a table never changes and
        # its number is never reused, so it is hashed once however many checkpoints include it.
        self._digests: dict[int, str] = {}

    def take(self, dest: str, *, link: bool = True) -> Checkpoint:
        fs = self._ctx.fs
        if fs.exists(dest) and fs.listdir(dest):
            raise StorageError(f"checkpoint directory {dest} is not empty")
        created = not fs.exists(dest)
        fs.makedirs(dest)
        cut = self._cut()
        placed: list[str] = []
        try:
            ckpt = self._write(cut, dest, link, placed)
        except BaseException:
            _discard(fs, dest, placed)
            raise
        finally:
            self._versions.unpin(cut.pinned)
        parent = posixpath.dirname(posixpath.normpath(dest))
        if created and parent:
            fs.fsync_dir(parent)
        return ckpt

    def _cut(self) -> _Cut:
        found: list[_Cut] = []

        def at_cut(levels: Levels) -> None:  # under the engine's mutex
            state = self._versions.state
            pinned = self._versions.pin_locked(levels)
            found.append(_Cut(levels, pinned, state.last_seq, state.next_file, self._clock()))

        # Whatever was applied before this call is in the memtable (or a frozen one, or a
        # table): flushing through it puts every acknowledged write into the cut's tables.
        self._flusher.flush_through(lambda mem: len(mem) > 0, at_cut)
        return found[0]

    def _write(self, cut: _Cut, dest: str, link: bool, placed: list[str]) -> Checkpoint:
        fs = self._ctx.fs
        tables: list[CheckpointTable] = []
        metas: list[dict[int, TableMeta]] = [{} for _ in cut.levels]
        digests: dict[int, str] = {}
        linked_all = link
        for level, files in enumerate(cut.levels):
            for t in files:
                name = table_name(t.file_no)
                dst = posixpath.join(dest, name)
                linked, sha = place_table(fs, t.path, dst, linked_all)
                placed.append(dst)
                linked_all = linked_all and linked  # once refused, the rest is copied too
                sha = sha or self._digests.get(t.file_no) or _sha256(fs, dst)
                digests[t.file_no] = sha
                tables.append(CheckpointTable(name, level, t.size, sha, t.entries))
                metas[level][t.file_no] = _meta(t)
        self._digests = digests
        # The checkpoint's own engine MANIFEST (and CURRENT): a data directory of these tables
        # with no log to replay. ManifestWriter fsyncs it and the directory (and so the names
        # of the tables placed above).
        manifest_no = cut.next_file
        state = ManifestState(
            self._ctx.opts.max_levels,
            levels=metas,
            log_number=manifest_no,
            next_file=manifest_no + 1,
            last_seq=cut.last_seq,
        )
        writer = ManifestWriter(fs, dest, manifest_no, state)
        writer.close()
        placed.extend([writer.path, posixpath.join(dest, "CURRENT")])
        ckpt = Checkpoint(
            dir=dest,
            tables=tuple(tables),
            last_seq=cut.last_seq,
            hlc=cut.hlc,
            max_ts=max((t.max_ts for files in cut.levels for t in files), default=0),
            linked=linked_all,
        )
        _write_json(fs, dest, ckpt)
        return ckpt


def _meta(t: TableReader) -> TableMeta:
    return TableMeta(t.file_no, t.size, t.entries, t.smallest, t.largest)


def _write_json(fs: FileSystem, dest: str, ckpt: Checkpoint) -> None:
    """CHECKPOINT.json last, atomically: its presence says the checkpoint is complete."""
    tmp = posixpath.join(dest, CHECKPOINT_FILE + ".tmp")
    f = fs.create(tmp)
    try:
        f.write(json.dumps(ckpt.to_json(), indent=1).encode() + b"\n")
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, posixpath.join(dest, CHECKPOINT_FILE))
    fs.fsync_dir(dest)


def _discard(fs: FileSystem, dest: str, placed: list[str]) -> None:
    """Remove what a failed checkpoint wrote (on a full disk its room is wanted back); the
    directory stays, empty, and a retry may use it."""
    for path in [*placed, posixpath.join(dest, CHECKPOINT_FILE + ".tmp")]:
        try:
            fs.remove(path)
        except OSError:
            pass
