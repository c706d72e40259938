"""A node's backup agent: its own part of every backup and restore, and the running of a
whole cluster's backup or restore when it is the node asked (`POST /admin/backup`,
`POST /admin/restore`).

The asked node coordinates, so `--no-wait` can return at once and the operator only calls a
route: it reads the ring record (one epoch for the whole cut; refused while a transition
runs), asks every member over RPC (kind BACKUP) to checkpoint and upload, follows their
progress, and writes the manifest last, only when every member finished: a backup without a
manifest is not complete, whatever happened. A member restarted mid-upload is asked again (its
new checkpoint holds everything the first one did; tables already uploaded are skipped); one
unreachable for PEER_TIMEOUT_S fails the backup with its name.

A restore downloads the backup's tables, merges them to the newest version per key
(restore_merge) and sends every key to its replicas in this cluster's ring with STREAM_APPLY,
the versioned path of range streaming. Every member keeps a marker (`backup/restore.json` in
its data directory) naming the backup and the last key every member acknowledged, so a
restore asked again after any restart resumes there, and a cluster holding data other than a
restore of that backup refuses unless `merge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from limedb.cluster import rpc
from limedb.cluster.background import BackgroundBudget
from limedb.cluster.backup import manifest as manifests
from limedb.cluster.backup.location import Location
from limedb.cluster.backup.progress import Pacer, Progress
from limedb.cluster.backup.restore_merge import (
    batches,
    newest_versions,
    next_chunk,
    write_batch_of,
)
from limedb.cluster.backup.store import ObjectStore, StoreError
from limedb.cluster.backup.upload import Checkpointing, NodeUpload
from limedb.cluster.ring.record import RingRecord
from limedb.hlc import wall_millis

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 30.0
POLL_S = 0.5
RPC_TIMEOUT_S = 30.0
APPLY_TIMEOUT_S = 10.0
APPLY_BYTES = 256 * 1024
CHUNK_KEYS = 2000
MARK_EVERY_KEYS = 20_000
KEPT_UPLOADS = 8


class BackupRefused(Exception):
    """The operation cannot start now or here (HTTP 409)."""


class BackupNotFound(Exception):
    """No such backup in the bucket (HTTP 404)."""


class JobFailed(Exception):
    """A running backup or restore stopped; the message says where and why."""


@dataclass
class Job:
    """A cluster-wide backup or restore coordinated by this node."""

    id: str
    kind: str  # backup | restore
    location: str
    phase: str = "running"  # running | complete | failed
    error: str | None = None
    started_ms: int = field(default_factory=wall_millis)
    finished_ms: int | None = None
    backup_id: str | None = None
    resumed_after: str | None = None
    progress: Progress = field(default_factory=Progress)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: asyncio.Task | None = None

    def finish(self, error: str | None = None) -> None:
        self.phase = "failed" if error else "complete"
        self.error = error
        self.finished_ms = wall_millis()
        self.progress.finished = time.monotonic()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "location": self.location,
            "phase": self.phase,
            "error": self.error,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "backup_id": self.backup_id,
            "resumed_after": self.resumed_after,
            "progress": self.progress.to_json(),
            "nodes": {
                node_id: {k: v for k, v in reply.items() if k in ("state", "error", "progress")}
                for node_id, reply in self.nodes.items()
            },
        }


@dataclass(frozen=True)
class Target:
    """The cluster as a backup or restore sees it: members, RF, epoch, the record."""

    members: dict[str, str]
    rf: int
    epoch: int
    record: dict[str, Any]

    def owners(self, ring_record: RingRecord | None, node_id: str) -> Callable[[bytes], tuple]:
        if ring_record is None:
            return lambda _skey: (node_id,)
        ring, rf = ring_record.ring, ring_record.rf
        return lambda skey: ring.replicas(int.from_bytes(skey[:8], "big"), rf)


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, rpc.PeerUnavailable | OSError | TimeoutError | asyncio.TimeoutError)


class Backups:
    """This node's backup agent (see the module's docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        node_url: str,
        engine: Checkpointing,
        data_dir: str,
        ring_record: Callable[[], RingRecord | None],
        call: rpc.Call | None,
        apply: Callable[[bytes], Awaitable[int]],
        local_count: Callable[[], int],
        budget: BackgroundBudget,
        mb_per_s: float,
    ) -> None:
        self.node_id = node_id
        self.node_url = node_url
        self.engine = engine
        self.dir = os.path.join(data_dir, "backup")
        self.ring_record = ring_record
        self.call = call
        self.apply = apply
        self.local_count = local_count
        self.budget = budget
        self.pacer = Pacer(mb_per_s * (1 << 20))
        self.uploads: dict[str, NodeUpload] = {}
        self.current: Job | None = None
        self.last: Job | None = None
        # Held while a backup or restore starts: two asked at once cannot both pass _claim.
        self._starting = asyncio.Lock()
        # Checkpoints and downloads of a run this process did not finish are garbage.
        for leftover in ("checkpoints", "restore-work"):
            shutil.rmtree(os.path.join(self.dir, leftover), ignore_errors=True)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "current": None if self.current is None else self.current.to_json(),
            "last": None if self.last is None else self.last.to_json(),
        }

    async def stop(self) -> None:
        for job in (self.current,):
            if job is not None and job.task is not None:
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task
        for upload in self.uploads.values():
            if upload.task is not None:
                upload.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upload.task

    # ------------------------------------------------------------------ the cluster

    def _target(self) -> tuple[Target, RingRecord | None]:
        record = self.ring_record()
        if record is None:
            members = {self.node_id: self.node_url}
            plain = {"epoch": 0, "members": members, "rf": 1, "transition": None}
            return Target(members, 1, 0, plain), None
        if record.active is not None:
            raise BackupRefused(
                f"ring transition {record.active.id} is running; try again when it has ended"
            )
        return Target(dict(record.ring.members), record.rf, record.ring.epoch,
                      record.to_record()), record  # fmt: skip

    def _claim(self) -> None:
        job = self.current
        if job is not None and job.phase == "running":
            raise BackupRefused(f"{job.kind} {job.id} is running on this node")

    async def _ask(self, node_id: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        message = {"op": op, **body}
        if node_id == self.node_id or self.call is None:
            return await self.handle(message)
        reply = await self.call(node_id, rpc.BACKUP, orjson.dumps(message), RPC_TIMEOUT_S)
        return orjson.loads(reply)

    # ------------------------------------------------------------------ backup

    async def start_backup(self, location: Location, credentials: dict[str, str]) -> Job:
        async with self._starting:
            return await self._start_backup(location, credentials)

    async def _start_backup(self, location: Location, credentials: dict[str, str]) -> Job:
        self._claim()
        target, _ = self._target()
        store = ObjectStore(location, credentials)
        await asyncio.to_thread(store.ensure_bucket)
        backup_id = manifests.new_backup_id(time.time())
        job = Job(backup_id, "backup", location.url, backup_id=backup_id)
        await asyncio.to_thread(
            store.put_json, location.pending_key(backup_id),
            {"id": backup_id, "started_ms": job.started_ms, "coordinator": self.node_id},
        )  # fmt: skip
        self.current = job
        job.task = asyncio.create_task(self._run_backup(job, store, credentials, target))
        return job

    async def _run_backup(
        self, job: Job, store: ObjectStore, credentials: dict[str, str], target: Target
    ) -> None:
        request = {
            "id": job.id,
            "location": store.location.to_json(),
            "credentials": credentials,
            "epoch": target.epoch,
        }
        error = None
        job.nodes = {node_id: {"state": "starting"} for node_id in target.members}
        try:
            for node_id in target.members:
                job.nodes[node_id] = await self._start_upload(node_id, request)
            await self._follow_uploads(job, request, target)
            nodes = {
                node_id: {
                    "url": url,
                    "cut_hlc": job.nodes[node_id]["cut_hlc"],
                    "tables": job.nodes[node_id]["tables"],
                }
                for node_id, url in target.members.items()
            }
            body = manifests.build_manifest(
                job.id, target.record, nodes, job.started_ms, wall_millis(),
                job.progress.bytes_uploaded,
            )  # fmt: skip
            await asyncio.to_thread(store.put_json, store.location.manifest_key(job.id), body)
        except asyncio.CancelledError:
            error = "the coordinating node stopped"
            raise
        except (JobFailed, BackupRefused, StoreError) as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug still ends the job visibly
            log.exception("backup %s failed", job.id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finish(error)
            self.last, self.current = job, None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(store.delete, [store.location.pending_key(job.id)])
            log.info("backup %s %s%s", job.id, job.phase, f": {error}" if error else "")

    async def _start_upload(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Ask `node_id` to checkpoint and upload (idempotent: a node that has the job
        answers with it), through lost connections for up to PEER_TIMEOUT_S."""
        reply = await self._retrying(node_id, lambda: self._ask(node_id, "upload", request))
        if reply.get("state") == "refused":
            raise JobFailed(f"node {node_id} refused the backup: {reply.get('error')}")
        return reply

    async def _follow_uploads(self, job: Job, request: dict[str, Any], target: Target) -> None:
        lost: dict[str, float] = {}
        while True:
            pending = [n for n in target.members if job.nodes[n].get("state") != "done"]
            if not pending:
                return
            replies = await asyncio.gather(
                *(self._ask(n, "upload_status", {"id": job.id}) for n in pending),
                return_exceptions=True,
            )
            for node_id, reply in zip(pending, replies, strict=True):
                if isinstance(reply, BaseException):
                    since = lost.setdefault(node_id, time.monotonic())
                    if time.monotonic() - since > PEER_TIMEOUT_S:
                        raise JobFailed(
                            f"node {node_id} ({target.members[node_id]}) unreachable for "
                            f"{PEER_TIMEOUT_S:.0f} s during its upload: {reply}"
                        )
                    job.nodes[node_id]["state"] = "unreachable"
                    continue
                lost.pop(node_id, None)
                if reply.get("state") == "unknown":
                    # Restarted since it was asked: a new checkpoint, uploads resume.
                    log.info("backup %s: %s restarted, asking it again", job.id, node_id)
                    reply = await self._start_upload(node_id, request)
                if reply.get("state") == "failed":
                    raise JobFailed(f"node {node_id}: {reply.get('error')}")
                job.nodes[node_id] = reply
            total = Progress()
            for reply in job.nodes.values():
                total.add(Progress.from_json(reply.get("progress", {})))
            total.started = job.progress.started
            job.progress = total
            await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------------ restore

    async def start_restore(
        self,
        location: Location,
        credentials: dict[str, str],
        backup_id: str | None,
        merge: bool,
    ) -> Job:
        async with self._starting:
            return await self._start_restore(location, credentials, backup_id, merge)

    async def _start_restore(
        self,
        location: Location,
        credentials: dict[str, str],
        backup_id: str | None,
        merge: bool,
    ) -> Job:
        self._claim()
        target, record = self._target()
        store = ObjectStore(location, credentials)
        backup = await asyncio.to_thread(self._find_backup, store, backup_id)
        states = {}
        for node_id in target.members:
            try:
                states[node_id] = await self._ask(node_id, "restore_state", {})
            except Exception as exc:
                if _unreachable(exc) or isinstance(exc, rpc.RpcError):
                    raise BackupRefused(f"member {node_id} is unreachable: {exc}") from exc
                raise
        job = Job(f"restore-{backup['id']}", "restore", location.url, backup_id=backup["id"])
        markers = {n: s.get("marker") for n, s in states.items()}
        ours = {n: m for n, m in markers.items() if m and m.get("backup_id") == backup["id"]}
        others = [
            f"{n} ({s['keys']} keys)" for n, s in states.items() if s["keys"] and n not in ours
        ]
        if others and not merge:
            raise BackupRefused(
                "the cluster already holds data (" + ", ".join(others) + "); a restore into "
                "it needs --merge (last-writer-wins then decides every key)"
            )
        cursor: bytes | None = None
        if ours and len(ours) == len(target.members):
            if all(m.get("complete") for m in ours.values()):
                job.progress.keys = max(m.get("keys", 0) for m in ours.values())
                job.finish()
                self.last = job
                return job
            cursors = [m.get("cursor") for m in ours.values()]
            if all(c is not None for c in cursors):
                cursor = bytes.fromhex(min(cursors))
                job.resumed_after = min(cursors)
        self.current = job
        job.task = asyncio.create_task(
            self._run_restore(job, store, backup, target, record, cursor)
        )
        return job

    def _find_backup(self, store: ObjectStore, backup_id: str | None) -> dict[str, Any]:
        location = store.location
        if backup_id is not None:
            found = store.get_json(location.manifest_key(backup_id))
            if found is None:
                raise BackupNotFound(f"no complete backup {backup_id} in {location.url}")
            return found
        listed = [
            store.get_json(obj.key) for obj in store.list("backups") if obj.key.endswith(".json")
        ]
        found = manifests.newest(m for m in listed if m)
        if found is None:
            raise BackupNotFound(f"no complete backup in {location.url}")
        return found

    async def _mark(self, target: Target, marker: dict[str, Any]) -> None:
        await asyncio.gather(*(self._mark_one(n, marker) for n in target.members))

    async def _mark_one(self, node_id: str, marker: dict[str, Any]) -> None:
        await self._retrying(node_id, lambda: self._ask(node_id, "restore_mark", marker))

    async def _retrying(self, node_id: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """`attempt()` until it succeeds; a member that stays unreachable for PEER_TIMEOUT_S
        fails the restore (asked again, it resumes from the last marked key)."""
        since = time.monotonic()
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if not (_unreachable(exc) or isinstance(exc, rpc.RpcError)):
                    raise
                if time.monotonic() - since > PEER_TIMEOUT_S:
                    raise JobFailed(
                        f"node {node_id} unreachable for {PEER_TIMEOUT_S:.0f} s: {exc}; "
                        "the restore resumes from its last recorded key when asked again"
                    ) from exc
                await asyncio.sleep(POLL_S)

    async def _run_restore(
        self,
        job: Job,
        store: ObjectStore,
        backup: dict[str, Any],
        target: Target,
        record: RingRecord | None,
        cursor: bytes | None,
    ) -> None:
        work = os.path.join(self.dir, "restore-work", backup["id"])
        marker = {"backup_id": backup["id"], "location": job.location, "complete": False,
                  "cursor": None if cursor is None else cursor.hex(), "keys": 0}  # fmt: skip
        error = None
        try:
            await self._mark(target, marker)
            paths = await self._download(job, store, backup, work)
            owners = target.owners(record, self.node_id)
            stream = newest_versions(paths, cursor)
            since_mark = 0
            while True:
                chunk = await asyncio.to_thread(next_chunk, stream, owners, CHUNK_KEYS)
                await asyncio.gather(
                    *(self._send(n, entries) for n, entries in chunk.by_owner.items())
                )
                job.progress.keys += chunk.keys
                since_mark += chunk.keys
                if chunk.last_key is not None and (chunk.done or since_mark >= MARK_EVERY_KEYS):
                    marker = {**marker, "cursor": chunk.last_key.hex(), "keys": job.progress.keys}
                    await self._mark(target, marker)
                    since_mark = 0
                if chunk.done:
                    break
            await self._mark(target, {**marker, "complete": True})
            job.progress.keys_total = job.progress.keys  # the estimate, now exact
        except asyncio.CancelledError:
            error = "the coordinating node stopped"
            raise
        except (JobFailed, StoreError) as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug still ends the job visibly
            log.exception("restore of %s failed", backup["id"])
            error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finish(error)
            self.last, self.current = job, None
            shutil.rmtree(work, ignore_errors=True)
            log.info("restore of %s %s%s", backup["id"], job.phase, f": {error}" if error else "")

    async def _download(
        self, job: Job, store: ObjectStore, backup: dict[str, Any], work: str
    ) -> list[str]:
        tables = manifests.tables_of(backup)
        # Every key is in the backup about RF times: the estimate the fraction and ETA use.
        job.progress.keys_total = backup.get("entries", 0) // max(
            backup.get("replication_factor", 1), 1
        )
        job.progress.files_total = len(tables)
        job.progress.bytes_total = sum(tables.values())
        os.makedirs(work, exist_ok=True)
        paths = []
        for sha, size in sorted(tables.items()):
            path = os.path.join(work, sha)
            got = await asyncio.to_thread(
                store.get_file, store.location.table_key(sha), path, lambda _n: None
            )
            if got != sha:
                raise JobFailed(f"table {sha} of backup {backup['id']} does not match its "
                                f"checksum (got {got}): run `limedb admin backup verify`")  # fmt: skip
            paths.append(path)
            job.progress.files_done += 1
            job.progress.bytes_done += size
        return paths

    async def _send(self, node_id: str, entries: list[bytes]) -> None:
        for body in batches(entries, APPLY_BYTES):
            if node_id == self.node_id or self.call is None:
                await self.apply(body)
                continue
            await self._retrying(node_id, functools.partial(
                self.call, node_id, rpc.STREAM_APPLY, body, APPLY_TIMEOUT_S))  # fmt: skip

    # ------------------------------------------------------------------ this node's part

    async def handle_rpc(self, body: bytes) -> bytes:
        return orjson.dumps(await self.handle(orjson.loads(body)))

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "upload":
            return await self._upload(message)
        if op == "upload_status":
            upload = self.uploads.get(str(message.get("id")))
            return {"state": "unknown"} if upload is None else upload.to_json()
        if op == "restore_state":
            return {"keys": self.local_count(), "marker": self._read_marker()}
        if op == "restore_mark":
            await asyncio.to_thread(self._write_marker, message)
            return {}
        raise rpc.RpcError(rpc.NOT_FOUND, f"unknown backup operation {op!r}")

    async def _upload(self, message: dict[str, Any]) -> dict[str, Any]:
        backup_id = str(message["id"])
        existing = self.uploads.get(backup_id)
        if existing is not None:
            return existing.to_json()
        record = self.ring_record()
        epoch = record.ring.epoch if record is not None else 0
        if int(message.get("epoch", epoch)) != epoch:
            return {"state": "refused",
                    "error": f"ring epoch here is {epoch}, the backup's is {message['epoch']}"}  # fmt: skip
        location = Location.from_json(message["location"])
        store = ObjectStore(location, message.get("credentials") or {})
        upload = NodeUpload(
            backup_id, store, self.engine, os.path.join(self.dir, "checkpoints"),
            self.pacer, self.budget,
        )  # fmt: skip
        await upload.checkpoint()
        self.uploads[backup_id] = upload
        for old in list(self.uploads)[:-KEPT_UPLOADS]:
            del self.uploads[old]
        upload.task = asyncio.create_task(upload.upload())
        return upload.to_json()

    def _marker_path(self) -> str:
        return os.path.join(self.dir, "restore.json")

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            with open(self._marker_path(), "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None

    def _write_marker(self, message: dict[str, Any]) -> None:
        marker = {k: v for k, v in message.items() if k != "op"}
        os.makedirs(self.dir, exist_ok=True)
        tmp = self._marker_path() + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(marker))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._marker_path())
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def lone_node_backups(
    engine: Any, node_id: str, node_url: str, data_dir: str, mb_per_s: float,
    local_count: Callable[[], int],
) -> Backups:  # fmt: skip
    """The agent of a node that runs alone: it is the whole cluster (RF 1, no ring)."""

    async def apply(entries: bytes) -> int:
        return sum(await engine.write_async(write_batch_of(entries, engine.hlc)))

    return Backups(
        node_id=node_id, node_url=node_url, engine=engine, data_dir=data_dir,
        ring_record=lambda: None, call=None, apply=apply, local_count=local_count,
        budget=BackgroundBudget(), mb_per_s=mb_per_s,
    )  # fmt: skip
