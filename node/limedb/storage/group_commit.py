"""Group commit: writing the queued WAL frames out and fsyncing them, for every writer at once.

A thread waiting for its write fsyncs for everyone queued behind it; event-loop writers park a
future that the syncer thread resolves after its fsync; in `periodic` mode the syncer fsyncs on
a timer. When a WAL write or fsync finds the disk full, the frames that were not durable are
kept for a fresh log, every log of the round is cut back to its last durable frame, writes are
refused (disk_full.py) and the syncer retries until the fresh log holds those frames.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from .context import EngineContext
from .errors import DiskFullError, StorageError, is_disk_full, refusal
from .wal import WalWriter, encode_items
from .write_path import WritePath, log_name

log = logging.getLogger("limedb.storage")

# While the disk is full: how often the syncer tries to write the WAL again.
SPACE_RETRY_S = 0.1


# What waits for a sequence to be durable: a future, or a callable told (None or the error).
Durable = Callable[[BaseException | None], None]


def _resolve(waiting: list, exc: BaseException | None) -> None:
    for fut in waiting:
        if not isinstance(fut, asyncio.Future):
            try:
                fut(exc)
            except Exception:  # the others still hear theirs
                log.exception("a durable-write callback failed")
        elif not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


class LogSyncer:
    """Makes queued WAL frames durable. `lock` is taken before the mutex, never after."""

    def __init__(
        self,
        ctx: EngineContext,
        writer: WritePath,
        finish_open: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._writer = writer
        self._space = ctx.space
        self._finish_open = finish_open  # what an open still has to write (retried when full)
        self.lock = threading.Lock()
        self._durability = ctx.opts.durability
        self._sync_mode = self._durability == "sync"
        self._buffer_bytes = ctx.opts.wal_buffer_bytes
        self.synced_seq = writer.seq
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future | Durable]] = []
        self._redo: list[bytes] = []  # frames not yet durable, for the next fresh log
        self._broken: list[WalWriter] = []  # logs to cut back to their last durable frame
        self._next_space_check = 0.0

    # ------------------------------------------------------------------ waiting

    def settle(self, seq: int) -> None:
        """After a write: wait until `seq` is durable (`sync`), or write out a full buffer."""
        if self._sync_mode:
            if self.synced_seq < seq:
                self.wait_durable(seq)
        elif self._writer.wal.pending_bytes >= self._buffer_bytes:
            self.write_out()

    def wait_durable(self, seq: int) -> None:
        """Group commit for threads: the first waiter fsyncs for everyone queued behind it."""
        with self.lock:
            if self.synced_seq >= seq:
                return
            if self._ctx.error is not None:
                self._ctx.check_open()
            self.sync_locked(fsync=True)

    def write_out(self) -> None:
        with self.lock:
            self.sync_locked(fsync=False)

    def sync(self) -> None:
        with self.lock:
            self.sync_locked(fsync=self._durability != "none")

    async def durable_async(self, seq: int) -> None:
        """Returns once `seq` is durable (per the durability mode), never blocking the loop."""
        fut = self.durable_soon(seq)
        if fut is not None:
            await fut

    def durable_soon(self, seq: int) -> asyncio.Future | None:
        """A future of the event loop that resolves once `seq` is durable (per the durability
        mode), or None when there is nothing to wait for. No coroutine: a caller that batches
        many writes into one (limedb.cluster.replica) waits on it without a task."""
        if self._durability != "sync":
            if self._writer.wal.pending_bytes >= self._ctx.opts.wal_buffer_bytes:
                self._ctx.sync_wake.set()
            return None
        if self.synced_seq >= seq:
            return None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        return fut if self._park(seq, loop, fut) else None

    def durable_then(self, seq: int, done: Durable) -> bool:
        """`durable_soon` with a callable: `done(None)` (or `done(error)`) is called on the
        event loop once `seq` is durable, straight from the syncer's wake-up, with no future
        and no further loop hop. False when there is nothing to wait for (`done` is not
        called then)."""
        if self._durability != "sync":
            if self._writer.wal.pending_bytes >= self._ctx.opts.wal_buffer_bytes:
                self._ctx.sync_wake.set()
            return False
        if self.synced_seq >= seq:
            return False
        return self._park(seq, asyncio.get_running_loop(), done)

    def _park(
        self, seq: int, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future | Durable
    ) -> bool:
        with self._ctx.mutex:
            if self.synced_seq >= seq:
                return False
            self._ctx.check_open()
            waiters = self._waiters
            waiters.append((seq, loop, waiter))
            # Only the first waiter since the syncer last took the list needs to wake it.
            wake = len(waiters) == 1
        if wake:
            self._ctx.sync_wake.set()
        return True

    # ------------------------------------------------------------------ writing out

    def sync_locked(self, *, fsync: bool) -> None:
        """Write out queued frames (and fsync them); caller holds `lock`."""
        with self._ctx.mutex:
            full = self._space.full
            chunks: list[tuple[WalWriter, list]] = []
            if full is None:
                chunks = self._writer.take_queued_locked()
            target = self._writer.seq
            waiters: list = []
            if (fsync or full is not None) and self._waiters:
                waiters = self._waiters
                self._waiters = []
        exc: BaseException | None = None
        if full is not None:
            # Nothing is written while the disk is full; whoever waits hears why.
            exc = refusal(str(full), full)
        frames = [(w, encode_items(items) if items else b"") for w, items in chunks]
        try:
            self._write_frames(frames, fsync)
        except _WriteFailed as failed:
            e = failed.cause
            if isinstance(e, OSError) and is_disk_full(e):
                exc = self._wal_failed(frames, failed.done, e)
            else:
                exc = e
                self._ctx.fail(e)
        if fsync and exc is None and target > self.synced_seq:
            self.synced_seq = target
        if waiters:
            _wake(waiters, exc)
        if isinstance(exc, DiskFullError):
            raise exc
        if exc is not None:
            raise StorageError(f"WAL write failed: {exc!r}") from exc

    def _write_frames(self, frames: list[tuple[WalWriter, bytes]], fsync: bool) -> None:
        """Write each log's frame, oldest log first; `_WriteFailed` says how many got done."""
        ordered = self._durability != "none"
        done = 0  # frames[:done] are written (and synced, if asked)
        try:
            for w, data in frames:
                if data:
                    w.file.write(data)
                    w.written += len(data)
                    if ordered:
                        w.unsynced.append(data)
                    else:
                        w.synced = w.written
                if w is not frames[-1][0]:
                    # An older log is durable before a newer one gets a byte, so a crash can
                    # never keep a newer write while losing an older one.
                    if ordered and w.written:
                        w.file.sync()
                    w.synced = w.written
                    w.unsynced = []
                    w.file.close()
                elif fsync and w.written:
                    w.file.sync()
                    w.synced = w.written
                    w.unsynced = []
                done += 1
        except BaseException as e:  # noqa: BLE001 - every writer must hear about it
            raise _WriteFailed(e, done) from e

    # ------------------------------------------------------------------ disk full

    def _wal_failed(
        self, frames: list[tuple[WalWriter, bytes]], done: int, exc: OSError
    ) -> DiskFullError:
        """A WAL write or fsync found the disk full (caller holds `lock`).

        Every frame not yet durable is kept for a fresh WAL file, each file of this round
        (and any log a writer opened meanwhile) is cut back to its last durable frame and never
        appended to again, and writes are refused until the fresh file holds those frames.
        Whoever waited for them hears DiskFullError: none of them was acknowledged.
        """
        redo: list[bytes] = []
        for i, (w, data) in enumerate(frames):
            redo.extend(w.unsynced)
            if data and i >= done and (not w.unsynced or w.unsynced[-1] is not data):
                redo.append(data)
            w.unsynced = []
            w.written = w.synced
        # Older logs of this round that were written, fsynced and closed are whole.
        broken = [w for i, (w, _) in enumerate(frames) if i >= done or i == len(frames) - 1]
        with self._ctx.mutex:
            # Writes applied after this round took its items (and logs a freeze opened).
            for w in self._writer.detach_logs_locked():
                late = w.take()
                if late:
                    redo.append(encode_items(late))
                if w not in broken:
                    broken.append(w)
            self._redo.extend(redo)
            self._broken.extend(broken)
            path = frames[-1][0].file_no if frames else 0
            err = self._space.enter_locked(
                f"WAL {log_name(path)}: {exc.strerror or exc}; writes refused until space is freed",
                exc,
            )
        try:
            self._cut_broken()
        except OSError as cut:
            log.warning("could not cut the WAL back yet (retrying): %s", cut)
        return err

    def _cut_broken(self) -> None:
        """Cut each broken WAL file back to its last durable frame and close it (caller holds
        `lock`); a file left with a torn frame would end the replay of every later log."""
        while self._broken:
            w = self._broken[0]
            if w.file is not None:
                w.file.truncate(w.synced)
                w.file.close()
            self._broken.pop(0)

    def open_wal(self, file_no: int) -> None:
        """Give the write path a fresh log `file_no` holding the frames not yet durable."""
        fs, path = self._ctx.fs, self._ctx.path(log_name(file_no))
        f = fs.create(path)
        data = b"".join(self._redo)
        try:
            if data:
                f.write(data)
                if self._durability != "none":
                    f.sync()
            fs.fsync_dir(self._ctx.dir)
        except BaseException:
            f.close()
            try:
                fs.remove(path)
            except OSError:
                pass
            raise
        self._writer.attach_wal(WalWriter(f, file_no, len(data)))
        self._redo = []

    def recover_space(self) -> bool:
        """One attempt to leave the disk-full state (caller holds `lock`); True once writes
        are accepted again. A disk still full just leaves things as they were."""
        space = self._space
        if space.full is None:
            return True
        try:
            self._cut_broken()
            self._finish_open()
        except (OSError, DiskFullError) as exc:
            if not is_disk_full(exc):
                self._ctx.fail(exc)
                raise StorageError(f"recovering from a full disk failed: {exc!r}") from exc
            log.debug("still no room in %s: %s", self._ctx.dir, exc)
            return False
        with self._ctx.mutex:
            # Every write applied so far is in a durable frame now: none came in while full.
            self.synced_seq = max(self.synced_seq, self._writer.seq)
            space.leave_locked()
            self._ctx.cv.notify_all()
        log.warning(
            "storage in %s has room again after %.1f s: writes resume",
            self._ctx.dir,
            time.time() - space.full_since,
        )
        self._ctx.sync_wake.set()
        self._ctx.compact_wake.set()
        return True

    def retry_space(self) -> None:
        """From a writer of an engine without background threads: try to leave the disk-full
        state, at most every `SPACE_RETRY_S`."""
        if self._space.full is None or time.monotonic() < self._next_space_check:
            return
        if not self.lock.acquire(blocking=False):
            return
        try:
            self._next_space_check = time.monotonic() + SPACE_RETRY_S
            self.recover_space()
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ thread, close

    def loop(self) -> None:
        """The syncer thread: periodic fsyncs, event-loop group commits, full-disk retries."""
        ctx = self._ctx
        periodic = self._durability == "periodic"
        timeout = ctx.opts.periodic_ms / 1000 if periodic else None
        fsync = self._durability != "none"
        while not ctx.closing:
            ctx.sync_wake.wait(SPACE_RETRY_S if self._space.full is not None else timeout)
            ctx.sync_wake.clear()
            if ctx.closing or ctx.error is not None:
                break
            try:
                with self.lock:
                    if self._space.full is not None:
                        self.recover_space()
                    self.sync_locked(fsync=fsync)
            except DiskFullError:
                continue
            except StorageError:
                break

    def close(self, exc: BaseException) -> None:
        """Tell every event-loop waiter `exc` and close the log files (the engine is closed)."""
        with self._ctx.mutex:
            waiters, self._waiters = self._waiters, []
        for _, loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, [fut], exc)
            except RuntimeError:
                pass
        for w in [*self._writer.open_logs(), *self._broken]:
            if w.file is not None:
                w.file.close()


class _WriteFailed(Exception):
    def __init__(self, cause: BaseException, done: int) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.done = done


def _wake(waiters: list, exc: BaseException | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for _, loop, fut in waiters:
        by_loop.setdefault(loop, []).append(fut)
    for loop, futs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futs, exc)
        except RuntimeError:  # the loop was closed meanwhile
            pass
