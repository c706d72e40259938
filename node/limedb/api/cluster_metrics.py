"""Prometheus families of the cluster as this node sees it: ring, members, transition, hints,
repair, verification, overload refusals and disk space (the monitoring kit's alerts are written on these).

Read at scrape time from the service protocols (`admin_status`, `ring_record`, `stats`), so
nothing is counted twice on the request path. Every node reports the same transition (the
record is gossiped): alert on the `max` over a cluster's nodes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from limedb.api.nodestats import disk_usage
from limedb.api.state import NodeState
from limedb.cluster.ring.record import RingRecord

PHASES = ("proposed", "streaming", "committed", "cleanup", "done", "rolled_back")


def _gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, text: str, value: float) -> Metric:
    family = CounterMetricFamily(name, text)
    family.add_metric([], value)
    return family


class ClusterCollector:
    def __init__(self, state: NodeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield from self._overload()
        yield from self._disk()
        service = state.service
        if service is None:
            return
        status = service.admin_status()
        yield from ring_families(status)
        yield from transition_families(status, service.ring_record())
        stats = service.stats()
        yield from hint_families((stats.get("cluster") or {}).get("hints"))
        yield from repair_families(status.get("repair"))
        yield from verification_families(status.get("verification"))
        if service.backups is not None:
            yield from backup_families(service.backups.status())

    def _overload(self) -> Iterator[Metric]:
        admission = self._state.admission
        yield _counter(
            "limedb_overload_refusals",
            "client requests refused with 503 + Retry-After: running and queue limits full",
            admission.rejected,
        )
        yield _counter(
            "limedb_overload_queued", "client requests that waited for a place", admission.queued
        )
        yield _gauge("limedb_requests_inflight", "client requests running", admission.running)
        yield _gauge("limedb_requests_waiting", "client requests queued", admission.waiting)

    def _disk(self) -> Iterator[Metric]:
        usage = disk_usage(self._state.config.data_dir)
        if "error" in usage:
            return
        yield _gauge(
            "limedb_disk_total_bytes",
            "size of the data directory's filesystem",
            usage["total_bytes"],
        )
        yield _gauge(
            "limedb_disk_free_bytes",
            "free bytes of the data directory's filesystem",
            usage["free_bytes"],
        )


def ring_families(status: dict) -> Iterator[Metric]:
    yield _gauge("limedb_ring_epoch", "epoch of the committed ring", status.get("epoch") or 0)
    rf = status.get("replication_factor")
    if rf is not None:
        yield _gauge("limedb_replication_factor", "replicas of every key", rf)
    members = [m for m in status.get("members") or () if m.get("state") != "Left"]
    yield _gauge("limedb_ring_members", "ring members (joining and leaving included)", len(members))
    down = sum(1 for m in members if m.get("liveness") == "dead")
    yield _gauge("limedb_ring_members_down", "ring members this node's detector says dead", down)
    up = GaugeMetricFamily(
        "limedb_member_up",
        "1 while this node's failure detector holds the member alive or suspect, 0 when dead",
        labels=["member", "state"],
    )
    for m in members:
        up.add_metric([m["node_id"], m.get("state", "")], 0.0 if m.get("liveness") == "dead" else 1)
    yield up


def transition_families(status: dict, record: RingRecord | None) -> Iterator[Metric]:
    running = status.get("transition")
    last = running or status.get("last_transition")
    yield _gauge("limedb_transition_running", "1 while a ring transition runs", 1 if running else 0)
    phase = GaugeMetricFamily(
        "limedb_transition_phase",
        "1 for the phase of the running (or else the last) transition",
        labels=["phase", "kind"],
    )
    if last is not None:
        for name in PHASES:
            phase.add_metric([name, last.get("kind", "")], 1.0 if last["phase"] == name else 0.0)
    yield phase
    if last is None:
        return
    for name, key, text in (
        ("ranges_moved", "ranges_moved", "ranges streamed so far"),
        ("ranges_total", "ranges_total", "ranges the transition streams"),
        ("keys_streamed", "keys_streamed", "keys streamed so far"),
        ("bytes_streamed", "bytes_streamed", "bytes streamed so far"),
        ("progress_ratio", "fraction", "share of the token space streamed (0..1)"),
    ):
        yield _gauge(f"limedb_transition_{name}", f"transition: {text}", last.get(key) or 0)
    t = record.transition if record is not None else None
    if t is not None and t.id == last.get("id"):
        yield _gauge(
            "limedb_transition_started_timestamp_seconds",
            "when the transition was proposed",
            t.started_ms / 1000,
        )
        yield _gauge(
            "limedb_transition_updated_timestamp_seconds",
            "when the transition last moved (a phase or a checkpoint)",
            t.updated_ms / 1000,
        )


def hint_families(hints: dict | None) -> Iterator[Metric]:
    if not hints:
        return
    yield _gauge("limedb_hints_pending", "hints waiting for their target", hints["pending"])
    yield _counter("limedb_hints_stored", "hints stored for unreachable replicas", hints["stored"])
    yield _counter("limedb_hints_replayed", "hints delivered to their target", hints["replayed"])
    yield _counter("limedb_hints_expired", "hints dropped past the hint window", hints["expired"])
    by_target = GaugeMetricFamily(
        "limedb_hints_pending_by_target", "hints waiting, by target", labels=["target"]
    )
    for target, count in sorted((hints.get("pending_by_target") or {}).items()):
        by_target.add_metric([target], count)
    yield by_target


def repair_families(repair: dict | None) -> Iterator[Metric]:
    if not repair:
        return
    yield _gauge("limedb_repair_running", "1 while an anti-entropy repair runs", repair["running"])
    yield _counter("limedb_repair_runs", "anti-entropy repair runs finished", repair["runs"])
    yield _counter(
        "limedb_repair_failed_runs", "repair runs that ended in an error", repair["failed_runs"]
    )
    yield _counter(
        "limedb_repair_ranges_differing",
        "ranges whose Merkle trees differed between replicas",
        repair["ranges_differing_total"],
    )
    yield _counter(
        "limedb_repair_keys_repaired",
        "keys pulled or pushed by repair",
        repair["keys_repaired_total"],
    )
    last = repair.get("last")
    if last and last.get("finished_ms"):
        yield _gauge(
            "limedb_repair_last_run_timestamp_seconds",
            "when the last repair run (a verification) finished",
            last["finished_ms"] / 1000,
        )


def verification_families(verification: dict | None) -> Iterator[Metric]:
    """The verifications this node ran, by result, and the newest one it knows of (whichever
    node ran it): alert on `increase(limedb_verifications_total{result!="ok"}[1h]) > 0`."""
    if not verification:
        return
    runs = CounterMetricFamily(
        "limedb_verifications",
        "verifications this node ran (after a transition or on demand), by result",
        labels=["result"],
    )
    for result, count in sorted(verification["runs"].items()):
        runs.add_metric([result], count)
    yield runs
    yield _counter(
        "limedb_verification_keys_repaired",
        "keys repaired by the verifications this node ran",
        verification["keys_repaired_total"],
    )
    last = verification.get("last")
    if last:
        labels = {"result": last["result"]}
        yield _gauge(
            "limedb_verification_last_epoch",
            "ring epoch of the newest verification",
            last["epoch"],
            labels,
        )
        yield _gauge(
            "limedb_verification_last_timestamp_seconds",
            "when the newest verification finished",
            last["finishedMs"] / 1000,
            labels,
        )


def backup_families(status: dict) -> Iterator[Metric]:
    """The backup or restore this node coordinates (running, else the last one): by kind,
    whether it runs, and its bytes, files and keys done out of the total."""
    job = status.get("current") or status.get("last")
    if job is None:
        return
    labels = {"kind": job["kind"], "id": job["backup_id"] or job["id"]}
    p = job["progress"]
    yield _gauge("limedb_backup_running", "1 while this node coordinates a backup or restore",
                 1 if job["phase"] == "running" else 0, labels)  # fmt: skip
    yield _gauge("limedb_backup_failed", "1 if the last backup or restore failed",
                 1 if job["phase"] == "failed" else 0, labels)  # fmt: skip
    for name, text in (
        ("bytes_done", "bytes uploaded, skipped or downloaded"),
        ("bytes_total", "bytes the backup or restore moves in all"),
        ("bytes_uploaded", "bytes a backup uploaded (the rest were in the bucket)"),
        ("files_done", "tables done"),
        ("files_total", "tables in all"),
        ("keys", "keys backed up (entries) or restored"),
        ("rate", "bytes per second"),
    ):
        yield _gauge(f"limedb_backup_{name}", text, p[name], labels)
    if p.get("eta_s") is not None:
        yield _gauge("limedb_backup_eta_seconds", "estimated seconds left", p["eta_s"], labels)
