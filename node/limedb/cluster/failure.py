"""Phi-accrual failure detector: how sure are we that a silent peer is down?

Each peer's heartbeat arrivals (a newer gossip heartbeat version, seen directly or through a
third node) form a window of inter-arrival times. phi is -log10 of the probability that a
live peer would stay silent this long, with arrivals modelled as a normal distribution (as
Akka does; Cassandra's exponential model reacts too slowly for a 1 s gossip interval). The
verdict is ALIVE below `suspect_phi`, SUSPECT above it, and DEAD once a suspect peer has also
been silent for `dead_after_s`. A heartbeat from a suspect or dead peer makes it ALIVE at once.

The decision functions (`phi_of`, `classify`) are pure; `FailureDetector` only keeps the
arrival windows and takes its clock as a parameter so tests can drive time.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

_LN10 = math.log(10)


class Liveness(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Tuning. The defaults suspect a peer ~4-5 s after its last heartbeat at a 1 s gossip
    interval and call it dead after 10 s of silence."""

    suspect_phi: float = 8.0
    dead_after_s: float = 10.0
    window: int = 100
    # Heartbeats arrive in bursts through indirect gossip; a floor on the deviation keeps a
    # run of very regular arrivals from making the detector twitchy.
    min_std_s: float = 0.5
    # Time a healthy peer may pause (GC, a busy shared core) on top of the mean interval.
    acceptable_pause_s: float = 1.0
    # The mean assumed before any interval has been measured.
    first_interval_s: float = 1.0


def phi_of(elapsed_s: float, mean_s: float, std_s: float) -> float:
    """Suspicion after `elapsed_s` of silence given the arrival mean and deviation.

    Uses the logistic approximation of the normal CDF, computed in log space so that phi
    keeps growing (instead of overflowing to infinity) during a long silence.
    """
    y = (elapsed_s - mean_s) / std_s
    z = y * (1.5976 + 0.070566 * y * y)  # 1 - CDF(y) ~= 1 / (1 + exp(z))
    if z > 0:
        return (z + math.log1p(math.exp(-z))) / _LN10
    return math.log1p(math.exp(z)) / _LN10


def suspect_deviations(suspect_phi: float) -> float:
    """How many deviations past the mean a silence lasts when phi reaches `suspect_phi`.

    phi grows strictly with silence, so comparing the silence against
    mean + deviations * std gives the same verdict as computing phi: `liveness()` is called
    for every replica of every request and this makes it a subtraction and two compares.
    """
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if phi_of(mid, 0.0, 1.0) < suspect_phi:
            low = mid
        else:
            high = mid
    return high


def classify(phi: float, silence_s: float, config: DetectorConfig) -> Liveness:
    """The rule: suspect from `suspect_phi` on, dead once also silent for `dead_after_s`."""
    if phi < config.suspect_phi:
        return Liveness.ALIVE
    if silence_s < config.dead_after_s:
        return Liveness.SUSPECT
    return Liveness.DEAD


class _ArrivalWindow:
    __slots__ = ("intervals", "last", "suspect_after", "total", "total_sq")

    def __init__(self, now: float, config: DetectorConfig, deviations: float) -> None:
        self.last = now
        self.intervals: deque[float] = deque(maxlen=config.window)
        self.total = 0.0
        self.total_sq = 0.0
        self.suspect_after = 0.0
        self._refresh(config, deviations)

    def add(self, interval: float, config: DetectorConfig, deviations: float) -> None:
        if len(self.intervals) == self.intervals.maxlen:
            old = self.intervals[0]
            self.total -= old
            self.total_sq -= old * old
        self.intervals.append(interval)
        self.total += interval
        self.total_sq += interval * interval
        self._refresh(config, deviations)

    def _refresh(self, config: DetectorConfig, deviations: float) -> None:
        """The silence (seconds) at which phi reaches the suspect threshold."""
        mean, std = self.mean_std(config)
        self.suspect_after = mean + config.acceptable_pause_s + deviations * std

    def mean_std(self, config: DetectorConfig) -> tuple[float, float]:
        n = len(self.intervals)
        if n == 0:
            return config.first_interval_s, config.min_std_s
        mean = self.total / n
        variance = max(self.total_sq / n - mean * mean, 0.0)
        return mean, max(math.sqrt(variance), config.min_std_s)


@dataclass(frozen=True, slots=True)
class PeerHealth:
    liveness: Liveness
    phi: float
    silence_s: float


class FailureDetector:
    """Arrival windows per peer; answers liveness on demand. Not thread-safe: one event loop
    owns it."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or DetectorConfig()
        self._clock = clock
        self._windows: dict[str, _ArrivalWindow] = {}
        self._deviations = suspect_deviations(self.config.suspect_phi)

    def _new_window(self, now: float) -> _ArrivalWindow:
        return _ArrivalWindow(now, self.config, self._deviations)

    def watch(self, node_id: str) -> None:
        """Start tracking a peer; being told about it counts as a first heartbeat, so a peer
        that never speaks becomes suspect after about one detection period."""
        if node_id not in self._windows:
            self._windows[node_id] = self._new_window(self._clock())

    def forget(self, node_id: str) -> None:
        self._windows.pop(node_id, None)

    def restart(self, node_id: str) -> None:
        """The peer restarted (new generation): its old rhythm says nothing about the new one."""
        self._windows[node_id] = self._new_window(self._clock())

    def heartbeat(self, node_id: str) -> None:
        now = self._clock()
        window = self._windows.get(node_id)
        if window is None:
            self._windows[node_id] = self._new_window(now)
            return
        # A gap long enough to make us suspicious is an outage, not a sample of the peer's
        # normal rhythm; learning from it would make the next outage slower to notice.
        if self._verdict(window, now - window.last) is Liveness.ALIVE:
            window.add(now - window.last, self.config, self._deviations)
        window.last = now

    def _verdict(self, window: _ArrivalWindow, silence: float) -> Liveness:
        # Equivalent to classify(phi, silence, config); see suspect_deviations.
        if silence < window.suspect_after:
            return Liveness.ALIVE
        return Liveness.SUSPECT if silence < self.config.dead_after_s else Liveness.DEAD

    def _health(self, window: _ArrivalWindow, now: float) -> PeerHealth:
        mean, std = window.mean_std(self.config)
        silence = max(now - window.last, 0.0)
        phi = phi_of(silence, mean + self.config.acceptable_pause_s, std)
        return PeerHealth(self._verdict(window, silence), phi, silence)

    def health(self, node_id: str) -> PeerHealth | None:
        window = self._windows.get(node_id)
        return None if window is None else self._health(window, self._clock())

    def liveness(self, node_id: str) -> Liveness:
        """ALIVE/SUSPECT/DEAD; a peer never watched nor heard from is DEAD."""
        window = self._windows.get(node_id)
        if window is None:
            return Liveness.DEAD
        silence = self._clock() - window.last
        # `_verdict`, inline: asked for a peer replica of nearly every operation.
        if silence < window.suspect_after:
            return Liveness.ALIVE
        return Liveness.SUSPECT if silence < self.config.dead_after_s else Liveness.DEAD

    def phi(self, node_id: str) -> float:
        health = self.health(node_id)
        return math.inf if health is None else health.phi

    def watched(self) -> list[str]:
        return list(self._windows)
