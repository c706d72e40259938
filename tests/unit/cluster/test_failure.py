"""The phi-accrual detector notices a silent peer within seconds and trusts it again at once."""

import math
import random

import pytest
from limedb.cluster.failure import (
    DetectorConfig,
    FailureDetector,
    Liveness,
    classify,
    phi_of,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def steady_peer(seconds: int = 30, interval: float = 1.0) -> tuple[FailureDetector, FakeClock]:
    clock = FakeClock()
    detector = FailureDetector(clock=clock)
    detector.watch("b")
    for _ in range(seconds):
        clock.advance(interval)
        detector.heartbeat("b")
    return detector, clock


def first_time_at(
    detector: FailureDetector, clock: FakeClock, state: Liveness, node: str = "b"
) -> float:
    """Seconds of silence until the detector first reports `state` (0.1 s resolution)."""
    start = clock.now
    while detector.liveness(node) is not state:
        clock.advance(0.1)
        assert clock.now - start < 120, f"never became {state}"
    return clock.now - start


def test_a_peer_heartbeating_every_second_stays_alive():
    detector, clock = steady_peer()
    clock.advance(1.5)
    assert detector.liveness("b") is Liveness.ALIVE


def test_a_silent_peer_is_suspected_within_ten_seconds_then_declared_dead():
    detector, clock = steady_peer()
    suspect_after = first_time_at(detector, clock, Liveness.SUSPECT)
    assert 2.5 < suspect_after < 7.0
    dead_after = suspect_after + first_time_at(detector, clock, Liveness.DEAD)
    assert suspect_after < dead_after <= 10.5


def test_a_heartbeat_from_a_dead_peer_makes_it_alive_immediately():
    detector, clock = steady_peer()
    clock.advance(60)
    assert detector.liveness("b") is Liveness.DEAD
    detector.heartbeat("b")
    assert detector.liveness("b") is Liveness.ALIVE


def test_an_outage_does_not_teach_the_detector_to_wait_longer_next_time():
    detector, clock = steady_peer()
    baseline = first_time_at(detector, clock, Liveness.SUSPECT)
    clock.advance(100)
    for _ in range(5):
        detector.heartbeat("b")
        clock.advance(1.0)
    detector.heartbeat("b")
    assert first_time_at(detector, clock, Liveness.SUSPECT) <= baseline + 0.2


def test_irregular_indirect_heartbeats_do_not_raise_false_suspicion():
    clock = FakeClock()
    detector = FailureDetector(clock=clock)
    detector.watch("b")
    rng = random.Random(42)
    for _ in range(2000):
        gap = rng.uniform(0.1, 2.2)
        # Check in the middle of each gap, where a twitchy detector would flap.
        clock.advance(gap)
        assert detector.liveness("b") is Liveness.ALIVE
        detector.heartbeat("b")


def test_a_peer_watched_but_never_heard_from_becomes_suspect():
    clock = FakeClock()
    detector = FailureDetector(clock=clock)
    assert detector.liveness("ghost") is Liveness.DEAD
    assert detector.phi("ghost") == math.inf
    detector.watch("ghost")
    assert detector.liveness("ghost") is Liveness.ALIVE
    assert first_time_at(detector, clock, Liveness.SUSPECT, node="ghost") < 7.0


def test_a_restart_forgets_the_old_rhythm():
    detector, clock = steady_peer(interval=0.2)
    fast = first_time_at(detector, clock, Liveness.SUSPECT)
    detector.restart("b")
    for _ in range(3):
        clock.advance(1.0)
        detector.heartbeat("b")
    assert detector.health("b").liveness is Liveness.ALIVE
    assert fast < first_time_at(detector, clock, Liveness.SUSPECT)


def test_forget_stops_tracking():
    detector, _ = steady_peer()
    detector.forget("b")
    assert detector.watched() == []
    assert detector.health("b") is None


def test_phi_grows_with_silence_and_stays_finite():
    values = [phi_of(t / 10, 2.0, 0.5) for t in range(0, 400)]
    assert values == sorted(values)
    assert values[0] < 0.01
    assert math.isfinite(phi_of(1e6, 1.0, 0.5))
    assert phi_of(2.0, 2.0, 0.5) == pytest.approx(math.log10(2))


def test_classify_needs_both_suspicion_and_long_silence_for_dead():
    config = DetectorConfig(suspect_phi=8, dead_after_s=10)
    assert classify(7.9, 100, config) is Liveness.ALIVE
    assert classify(8.0, 9.9, config) is Liveness.SUSPECT
    assert classify(50, 10.0, config) is Liveness.DEAD


def test_the_fast_liveness_check_gives_the_same_verdict_as_computing_phi():
    rng = random.Random(11)
    for trial in range(200):
        clock = FakeClock()
        detector = FailureDetector(clock=clock)
        node = f"p{trial}"
        detector.watch(node)
        spread = rng.uniform(0.01, 3.0)
        for _ in range(rng.randrange(0, 40)):
            clock.advance(rng.uniform(0.05, spread))
            detector.heartbeat(node)
        for _ in range(50):
            clock.advance(rng.uniform(0.0, 0.6))
            health = detector.health(node)
            if abs(health.phi - detector.config.suspect_phi) < 1e-6:
                continue  # on the threshold itself rounding may go either way
            expected = classify(health.phi, health.silence_s, detector.config)
            assert detector.liveness(node) is expected, (trial, health)
