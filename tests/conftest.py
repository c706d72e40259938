"""Suite-wide rule: a test that starts real processes says so with a marker.

`make test-unit` runs what needs no process (`-m "not (process or cluster or ...)"`) and the
other targets select by these markers, so a test that starts a node, a cluster, a namespace lab,
redis-server or the control plane without one would slip into the fast tier unseen. The
fixtures below start processes; using one without a process marker fails the collection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.s3 import S3Server, start_s3_server

PROCESS_MARKERS = (
    "process", "cluster", "faults", "faketime", "redis", "k8s", "nemesis", "browser",
)  # fmt: skip
PROCESS_FIXTURES = frozenset(
    {
        "node_factory", "node", "module_node", "wire_node", "lime",  # tests/node
        "make_cluster", "fleet", "cluster", "three", "tls_three",  # tests/cluster, faults
        "netlab", "small_disk", "disks",  # network namespaces, tmpfs data dirs
        "redis_reference", "limedb_single", "limedb_three", "limited",  # tests/resp
        "control_plane", "operator", "kube", "s3_on_node",  # tests/k8s
        "browser",  # tests/ui: a headless Chromium
        "s3_server",  # SeaweedFS's weed server -s3 (tests/support/s3.py)
    }
)  # fmt: skip


# Test files `make test` runs in its second lane beside the waiting tiers (marker `second_lane`,
# scripts/test-lanes.sh), chosen from an idle run's --durations so that both lanes take about as
# long: long cluster tests whose time is mostly waiting on timers and fault plans.
# Measured 2026-12-03 on an idle machine from a fresh clone (`make test`): with
# test_clock_skew.py (~100 s) and test_transitions_faults.py (~170 s) in the second lane the
# lanes took 832 s and 1,170 s; with test_clock_skew.py alone, about 1,000 s each.
SECOND_LANE_FILES = frozenset({"test_clock_skew.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SECOND_LANE_FILES:
            item.add_marker(pytest.mark.second_lane)
    unmarked = [
        item.nodeid
        for item in items
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and not any(item.get_closest_marker(name) for name in PROCESS_MARKERS)
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that start processes need one of the markers "
            f"{', '.join(PROCESS_MARKERS)}: {', '.join(unmarked)}"
        )


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server for this module's tests (SeaweedFS `weed server -s3` on loopback):
    `.endpoint`, `.access_key`, `.secret_key`, `.region`, `.client()` (boto3), `.env()` (the
    AWS_* variables for a process). Shared by the module: each test uses buckets of its own."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
