"""RESP commands served, refused and how long they took, by command: Prometheus families
`limedb_resp_commands_total`, `limedb_resp_command_errors_total` and the histogram
`limedb_resp_command_duration_seconds` (from the parsed request to the encoded reply; a
command that waits for replicas counts its wait)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class CommandStats:
    """Counts, errors and latency buckets per command name (known commands only)."""

    def __init__(self) -> None:
        # name -> [bucket counts..., +Inf count], errors, seconds
        self._counts: dict[str, list[int]] = {}
        self._errors: dict[str, int] = {}
        self._seconds: dict[str, float] = {}

    def observe(self, name: str, seconds: float, error: bool) -> None:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = [0] * (len(BUCKETS) + 1)
            self._errors[name] = 0
            self._seconds[name] = 0.0
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._seconds[name] += seconds
        if error:
            self._errors[name] += 1

    def totals(self) -> dict:
        """All commands together: count, errors and latency buckets (for /admin/stats)."""
        counts = [0] * (len(BUCKETS) + 1)
        for per_command in self._counts.values():
            for i, count in enumerate(per_command):
                counts[i] += count
        return {
            "total": sum(counts),
            "errors": sum(self._errors.values()),
            "latency": {
                "bounds_s": list(BUCKETS),
                "counts": counts,
                "sum_s": round(sum(self._seconds.values()), 6),
            },
        }

    def collect(self) -> Iterator[Metric]:
        served = CounterMetricFamily(
            "limedb_resp_commands", "RESP commands run, by command", labels=["command"]
        )
        errors = CounterMetricFamily(
            "limedb_resp_command_errors", "RESP commands answered with an error", labels=["command"]
        )
        latency = HistogramMetricFamily(
            "limedb_resp_command_duration_seconds", "RESP command latency", labels=["command"]
        )
        for name, counts in sorted(self._counts.items()):
            served.add_metric([name], sum(counts))
            errors.add_metric([name], self._errors[name])
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([name], buckets, self._seconds[name])
        yield served
        yield errors
        yield latency
