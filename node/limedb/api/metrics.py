"""Prometheus metrics: request counts and latency histograms per route, plus storage stats.

Observations happen on every request of the hot path, so they are plain list increments on the
event loop thread (no locks, no label lookups); a custom collector turns them into Prometheus
families only when /metrics is scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RouteHistogram:
    __slots__ = ("counts", "sum", "statuses")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.statuses: dict[int, int] = {}


class RouteStats:
    """Request counts by (method, route, status) and latency by (method, route)."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], RouteHistogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        hist = self._routes.get((method, route))
        if hist is None:
            hist = self._routes[(method, route)] = RouteHistogram()
        hist.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        hist.sum += seconds
        hist.statuses[status] = hist.statuses.get(status, 0) + 1

    def routes(self) -> list[tuple[tuple[str, str], RouteHistogram]]:
        """((method, route), histogram) of every route served so far."""
        return list(self._routes.items())

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "limedb_http_requests", "HTTP requests served", labels=["method", "route", "status"]
        )
        latency = HistogramMetricFamily(
            "limedb_http_request_duration_seconds",
            "HTTP request latency",
            labels=["method", "route"],
        )
        for (method, route), hist in sorted(self._routes.items()):
            for status, count in sorted(hist.statuses.items()):
                requests.add_metric([method, route, str(status)], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([method, route], buckets, hist.sum)
        yield requests
        yield latency


class StorageCollector:
    """Numeric entries of `service.stats()` as gauges named limedb_storage_<name>."""

    def __init__(self, stats: Callable[[], dict | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats() or {}
        ready = GaugeMetricFamily("limedb_ready", "1 when storage recovery finished")
        ready.add_metric([], 1.0 if stats else 0.0)
        yield ready
        clock = stats.get("clock")
        flat = _flatten({k: v for k, v in stats.items() if k != "clock"})
        for name, value in sorted(flat):
            gauge = GaugeMetricFamily(f"limedb_storage_{name}", f"storage stat {name}")
            gauge.add_metric([], float(value))
            yield gauge
        if clock:
            yield from _clock_families(clock)


# (metric, stats key, help) of the clock's counters (docs/operations.md, "Clock skew").
_CLOCK_COUNTERS = (
    ("timestamps_refused", "timestamps_refused", "remote timestamps beyond the maximum offset"),
    ("writes_refused", "writes_refused", "writes refused: this node's clock is off the majority"),
    ("hlc_not_adopted", "hlc_not_adopted", "timestamps stored but not adopted into the HLC"),
    ("probes_failed", "probes_failed", "clock offset probes that got no answer"),
)


def _clock_families(clock: dict) -> Iterator[Metric]:
    offset = GaugeMetricFamily(
        "limedb_clock_offset_seconds", "this node's clock minus the majority's, as measured"
    )
    offset.add_metric([], clock["offset_ms"] / 1000)
    yield offset
    bound = GaugeMetricFamily("limedb_clock_max_offset_seconds", "max_clock_offset_ms")
    bound.add_metric([], clock["max_offset_ms"] / 1000)
    yield bound
    allowed = GaugeMetricFamily(
        "limedb_clock_writes_allowed", "0 while this node refuses to coordinate writes"
    )
    allowed.add_metric([], 1.0 if clock["writes_allowed"] else 0.0)
    yield allowed
    peers = GaugeMetricFamily(
        "limedb_clock_peer_offset_seconds", "a peer's clock minus this node's", labels=["peer"]
    )
    for peer, value in clock["peer_offsets_ms"].items():
        peers.add_metric([peer], value / 1000)
    yield peers
    for name, key, text in _CLOCK_COUNTERS:
        counter = CounterMetricFamily(f"limedb_clock_{name}", text)
        counter.add_metric([], clock[key])
        yield counter


def _flatten(stats: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in stats.items():
        name = prefix + "".join(c if c.isalnum() else "_" for c in str(key))
        if isinstance(value, bool):
            yield name, float(value)
        elif isinstance(value, int | float):
            yield name, value
        elif isinstance(value, dict):
            yield from _flatten(value, name + "_")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _flatten(item, f"{name}_{i}_")
                elif isinstance(item, int | float) and not isinstance(item, bool):
                    yield f"{name}_{i}", item


class AttachedCollectors:
    """The collectors in `collectors` at scrape time (attached after the registry was built)."""

    def __init__(self, collectors: list) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in list(self._collectors):
            yield from collector.collect()


def build_registry(
    stats: RouteStats, storage_stats: Callable[[], dict | None], *collectors: object
) -> CollectorRegistry:
    """`collectors`: more objects with a `collect()` (e.g. the connection budget)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(stats)  # type: ignore[arg-type]
    registry.register(StorageCollector(storage_stats))  # type: ignore[arg-type]
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
