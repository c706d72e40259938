"""Polling with a deadline for the k8s tests: support.wait with the Kubernetes client's API
errors counted as "not yet" and the keyword names these tests use."""

from __future__ import annotations

from kubernetes.client.rest import ApiException
from support.wait import TRANSIENT
from support.wait import wait_for as _wait_for


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what="condition"):
    """Poll until predicate() returns a truthy value; fail with `what` (a string, or a callable
    evaluated at the deadline for the state at that moment) after the deadline."""
    return _wait_for(predicate, timeout, what, step_s=interval, tolerate=(*TRANSIENT, ApiException))
