"""Polling with a deadline for the k8s tests (no sleeps where a condition can be awaited)."""

from __future__ import annotations

import time

from kubernetes.client.rest import ApiException


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what="condition"):
    """Poll until predicate() returns a truthy value; fail with `what` (a string, or a callable
    evaluated at the deadline for the state at that moment) after the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except ApiException as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    if callable(what):
        what = what()
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
