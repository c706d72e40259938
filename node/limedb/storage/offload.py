"""Runs big flushes and compactions in worker processes, so they use another core, not the GIL.

A flush worker gets the frozen memtable's entries, unsorted, as a stream of small pickled chunks
(one pickle of a whole 16 MiB memtable held the GIL, and so the event loop, for ~100 ms; a chunk
takes ~1 ms, and the pipe writes between chunks release the GIL), sorts them and writes the L0
table; a compaction worker merges input tables into output tables; a filter worker hashes every
key of the tables for the engine-wide filter; an ingest's plan sorts an external table out
(storage/ingest_plan.py). Workers only create files with numbers the engine
reserved; the engine alone edits the MANIFEST and installs results.

Workers are plain `python -c "...offload import serve; serve()"` children speaking length-prefixed pickles
over stdin/stdout (not multiprocessing: spawning would re-import the user's main module). A
worker exits when its stdin reaches EOF, which happens when the engine closes it or its process
dies, and a watchdog thread also exits it within 0.1 s if it is orphaned in the middle of a job.
"""

from __future__ import annotations

import logging
import os
import pickle
import posixpath
import signal
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

from . import export, ingest_plan
from .block_cache import BlockCache
from .bloom import add_hashes, key_hash, pair_words
from .compaction import Compaction, RateLimiter, run
from .fs import RealFS
from .options import EngineOptions
from .record import Rec
from .sstable import TableBuilder, TableMeta, TableReader, table_name

log = logging.getLogger("limedb.storage")
_LEN = struct.Struct("<I")
# Smaller flushes, compactions and purges run in-process: cheaper than a worker round trip, and
# small databases (and tests) never start worker processes at all.
OFFLOAD_MIN_BYTES = 1 << 20
# The niceness of the worker that cuts ranges for another node (Engine.export_ranges): a
# range streamed to a new owner is background work, and the client requests this node serves
# meanwhile keep their share of the cores. One such worker: cuts wait for each other (each
# uses a core while it runs), and a second process costs another ~0.25 s of CPU to start.
BACKGROUND_NICE = 10
BACKGROUND_WORKERS = 1
# The directory holding the `limedb` package, so workers import the same code as the engine.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerError(Exception):
    """A worker failed or died; the engine then does the work in-process, unless `errno`
    says the disk is full (then it backs off: in-process would find it just as full)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def build_table(
    dirpath: str,
    file_no: int,
    opts: EngineOptions,
    global_words: int,
    entries: int,
    chunks: Iterable[list[tuple[bytes, Rec]]],
) -> tuple[TableMeta, bytes]:
    """Write a table from a frozen memtable's `entries` (key, record) pairs, streamed in chunks
    (a key sent twice: the later record wins); also return the keys' hashes as a filter of
    `global_words` words (or fewer: the engine-wide filter tiles it to its own size)."""
    stage(opts.bloom_bits_per_key, entries, global_words, chunks)
    return build_staged(dirpath, file_no, opts, global_words, entries)


# The memtable entries `stage` received, kept for `build_staged` (one memtable per worker).
_staged: dict[str, Any] = {}


def stage(
    bits_per_key: int, max_entries: int, global_words: int, chunks: Iterable[list[tuple]]
) -> int:
    """Receive a memtable's (key, record) pairs in chunks (a key sent again: the later record
    wins) and keep them for `build_staged`; returns how many keys it holds. Each chunk is
    hashed into the filter as it arrives (in memory order: cheap on the CPU's caches), while
    the engine sends the next, or while the memtable is still being written."""
    _staged.clear()
    data: dict[bytes, Rec] = {}
    words = array("Q", bytes(8 * pair_words(max_entries, bits_per_key, global_words)))
    for chunk in chunks:
        data.update(chunk)
        add_hashes(words, map(key_hash, map(itemgetter(0), chunk)))
    _staged.update(data=data, words=words)
    return len(data)


def build_staged(
    dirpath: str, file_no: int, opts: EngineOptions, global_words: int, entries: int
) -> tuple[TableMeta, bytes]:
    """Write the staged memtable (which must hold `entries` keys) as table `file_no`; see
    `build_table`."""
    data: dict[bytes, Rec] = _staged.pop("data")
    words: array = _staged.pop("words")
    if len(data) != entries:
        raise ValueError(f"memtable of {entries} entries, {len(data)} received")
    builder = TableBuilder(
        RealFS(),
        posixpath.join(dirpath, table_name(file_no)),
        file_no,
        opts.block_bytes,
        opts.bloom_bits_per_key,
        hash_keys=False,
    )
    builder.add_all(sorted(data), data)
    meta = builder.finish(global_words=global_words, filter_words=words)
    return meta, builder.global_filter.tobytes()


def table_filter(tables: list[TableReader], nwords: int) -> array:
    """A filter of `nwords` words holding the hash of every key of these tables (read block by
    block, keys only: the records are not decoded)."""
    words = array("Q", bytes(8 * nwords))
    for t in tables:
        for i in range(t.nblocks):
            add_hashes(words, map(key_hash, t.block_keys(i)))
    return words


def global_filter(dirpath: str, file_nos: list[int], nwords: int) -> bytes:
    fs = RealFS()
    cache = BlockCache(0)
    tables = [
        TableReader(fs, posixpath.join(dirpath, table_name(no)), no, cache) for no in file_nos
    ]
    return table_filter(tables, nwords).tobytes()


def compact(
    dirpath: str,
    inputs: list[tuple[int, int]],
    output_level: int,
    bottom: bool,
    opts: EngineOptions,
    file_nos: list[int],
    purge: list[tuple[bytes, bytes | None]] | None = None,
) -> list[TableMeta]:
    """Merge the input tables (level, file number) into new tables numbered from `file_nos`,
    leaving out the key ranges of `purge` (a range purge's rewrite)."""
    fs = RealFS()
    cache = BlockCache(0)
    readers = [
        (lvl, TableReader(fs, posixpath.join(dirpath, table_name(no)), no, cache))
        for lvl, no in inputs
    ]
    numbers = iter(file_nos)

    def make_builder() -> TableBuilder:
        no = next(numbers)
        return TableBuilder(
            fs,
            posixpath.join(dirpath, table_name(no)),
            no,
            opts.block_bytes,
            opts.bloom_bits_per_key,
        )

    c = Compaction(output_level, readers, bottom, purge=list(purge or ()))
    return run(c, make_builder, opts, RateLimiter(opts.compaction_rate_bytes_per_s), lambda: False)


_JOBS = {
    "build_table": build_table,
    "build_staged": build_staged,
    "stage": stage,
    "compact": compact,
    "export_ranges": export.cut_in_worker,
    "global_filter": global_filter,
    "ingest_plan": ingest_plan.sort_out_in_worker,
}


def _read_msg(stream: Any) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (n,) = _LEN.unpack(head)
    body = stream.read(n)
    if len(body) < n:
        raise EOFError
    return pickle.loads(body)


def _write_msg(stream: Any, obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(body)) + body)
    stream.flush()


class Worker:
    """One worker process; `call` runs a job in it and returns the result (one job at a time)."""

    def __init__(self, nice: int = 0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        main = f"import os; os.nice({int(nice)}); " if nice else ""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", main + "from limedb.storage.offload import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, job: str, *args: Any, stream: Iterable[Any] | None = None) -> Any:
        """Run `job(*args)`, or with `stream`, `job(*args, [every chunk of stream])`: the chunks
        are pickled and sent one by one, so no single pickle holds the GIL for long."""
        try:
            _write_msg(self.proc.stdin, (job, args, stream is not None))
            if stream is not None:
                for chunk in stream:
                    _write_msg(self.proc.stdin, chunk)
                _write_msg(self.proc.stdin, None)
            ok, result, err = _read_msg(self.proc.stdout)
        except (OSError, EOFError, pickle.PickleError) as exc:
            self.kill()
            raise WorkerError(f"worker {self.pid} died: {exc!r}") from exc
        if not ok:
            raise WorkerError(f"worker {self.pid} failed: {result}", err)
        return result

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin) and wait for it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class WorkerPool:
    """Up to `size` workers (at niceness `nice`) started on demand; a job waits for an idle
    one."""

    def __init__(self, size: int, nice: int = 0) -> None:
        self._size = size
        self._nice = nice
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._waiting = 0  # callers of `acquire` waiting for a worker

    def call(self, job: str, *args: Any, stream: Iterable[Any] | None = None) -> Any:
        worker = self.acquire()
        assert worker is not None
        try:
            return worker.call(job, *args, stream=stream)
        finally:
            self.release(worker)

    def acquire(self, *, wait: bool = True) -> Worker | None:
        """A worker for the caller alone until `release` (several jobs in a row on it);
        without `wait`, None when none is idle and the pool is full."""
        with self._cv:
            if not wait and self._waiting:
                return None  # leave the next idle worker to whoever waits for one
            while not self._idle and len(self._busy) >= self._size and not self._closed:
                if not wait:
                    return None
                self._waiting += 1
                try:
                    self._cv.wait()
                finally:
                    self._waiting -= 1
            if self._closed:
                raise WorkerError("worker pool closed")
            worker = self._idle.pop() if self._idle else Worker(self._nice)
            self._busy.add(worker)
            return worker

    def release(self, worker: Worker) -> None:
        with self._cv:
            self._busy.discard(worker)
            if self._closed or worker.proc.poll() is not None:
                worker.close()
            else:
                self._idle.append(worker)
            self._cv.notify()

    def pids(self) -> list[int]:
        with self._cv:
            return [w.pid for w in [*self._idle, *self._busy]]

    def close(self, *, kill_running: bool) -> None:
        """Stop every worker; running jobs are killed (their partial files are garbage)."""
        with self._cv:
            self._closed = True
            idle, busy = self._idle, list(self._busy)
            self._idle = []
            self._cv.notify_all()
        for w in idle:
            w.close()
        for w in busy:
            if kill_running:
                w.kill()


class Offloader:
    """The engine's side: its pools, started on first use (the background one with
    BACKGROUND_WORKERS workers at BACKGROUND_NICE), and whether offloading is still on (a worker failing for another reason
    than a full disk turns it off for good)."""

    def __init__(self, enabled: bool, size: int) -> None:
        self.enabled = enabled
        self.size = size
        self.pool: WorkerPool | None = None
        self.background: WorkerPool | None = None
        self.closing = False

    def get(self, *, background: bool = False) -> WorkerPool | None:
        """The pool (`background`: the low-priority one), or None: do the work in-process."""
        if not self.enabled or self.closing:
            return None
        if background:
            if self.background is None:
                self.background = WorkerPool(BACKGROUND_WORKERS, BACKGROUND_NICE)
            return self.background
        if self.pool is None:
            self.pool = WorkerPool(self.size)
        return self.pool

    def failed(self, what: str, exc: BaseException) -> None:
        if self.closing:
            return
        log.warning("offloaded %s failed (%r); running it in-process from now on", what, exc)
        self.enabled = False

    def close(self) -> None:
        """A running compaction is abandoned (its outputs are unreferenced garbage, removed at
        the next open); a running flush is also killed: its data is still in the WAL."""
        self.closing = True
        for pool in (self.pool, self.background):
            if pool is not None:
                pool.close(kill_running=True)


def _exit_when_orphaned(parent: int) -> None:
    # Poll often: an orphan must not keep writing into a directory a restarted engine now owns.
    while os.getppid() == parent:
        time.sleep(0.1)
    # Gone now, without the cleanup of a normal exit (the main thread may be mid-write).
    os.kill(os.getpid(), signal.SIGKILL)


def serve() -> None:
    """Worker main loop: run jobs from stdin until EOF."""
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    while True:
        try:
            job, args, streamed = _read_msg(stdin)
        except EOFError:
            return
        # A streamed job gets its chunks as they arrive, so it can work on one while the
        # engine sends the next; whatever it leaves unread is read before the reply.
        stream = _Stream(stdin) if streamed else None
        if job != "build_staged":
            _staged.clear()  # a stage not built is not wanted any more
        try:
            reply = (True, _JOBS[job](*args, *([stream] if stream else [])), None)
        except EOFError:
            return
        except Exception as exc:  # noqa: BLE001 - reported to the engine, which falls back
            err = exc.errno if isinstance(exc, OSError) else None
            reply = (False, f"{type(exc).__name__}: {exc}", err)
        if stream is not None:
            try:
                stream.drain()
            except EOFError:
                return
        _write_msg(stdout, reply)


class _Stream:
    """The chunks of a streamed job, read from the pipe one at a time until its end marker."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin
        self._ended = False

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._ended:
            raise StopIteration
        chunk = _read_msg(self._stdin)
        if chunk is None:
            self._ended = True
            raise StopIteration
        return chunk

    def drain(self) -> None:
        for _ in self:
            pass
