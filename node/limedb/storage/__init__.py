"""LimeDB's storage engine: a durable log-structured merge tree usable as a library.

from limedb.storage import Engine, EngineOptions
with Engine.open("/var/lib/limedb", EngineOptions(durability="sync")) as db:
    db.put(b"k", b"v")
"""

from .batch import WriteBatch
from .checkpoint import Checkpoint, CheckpointTable, load_checkpoint
from .engine import Engine
from .errors import CorruptionError, EngineClosedError, StorageError
from .fs import CrashableMemFS, FileSystem, RealFS
from .options import EngineOptions
from .record import Version
from .snapshot import Snapshot
from .sstable import iter_table_entries

__all__ = [
    "Checkpoint",
    "CheckpointTable",
    "CorruptionError",
    "CrashableMemFS",
    "Engine",
    "EngineClosedError",
    "EngineOptions",
    "FileSystem",
    "RealFS",
    "Snapshot",
    "StorageError",
    "Version",
    "WriteBatch",
    "iter_table_entries",
    "load_checkpoint",
]
