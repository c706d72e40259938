"""The dashboard in a real headless Chromium against a real 3-node cluster: it asks for the
cluster secret (an admin user once users exist), then shows the ring, the members and the epoch; during a join its progress bar
advances and the new member appears; after a leave the member is gone; a killed node turns red
within 15 s. A screenshot of every state is kept (support.browser.artifacts_dir)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.browser import artifacts_dir, chromium_page
from support.cluster import Workload
from support.history import History
from support.transitions import Fleet, preload
from support.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_REPLICATION_FACTOR": "3",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    # A join streams ~7 MB at 1 MB/s: several seconds of progress for the page to show.
    "LIMEDB_STREAM_MB_PER_S": "1",
}
PAGE_TIMEOUT_MS = 60_000
KILLED_RED_WITHIN_MS = 15_000


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, ENV, first_host=150)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    """A page of a fresh headless Chromium."""
    with chromium_page(tmp_path / "chromium-profile") as page:
        yield page


def member_rows(page) -> dict[str, dict[str, str]]:
    return page.eval_on_selector_all(
        "#members tbody tr",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.url,
            {state: r.dataset.state, liveness: r.dataset.liveness, cls: r.className,
             color: getComputedStyle(r.cells[0]).color}]))""",
    )


def owners(page) -> set[str]:
    return set(page.eval_on_selector_all("#ownership li", "items => items.map(i => i.dataset.url)"))


def cell(page, node, column: int) -> str:
    """The text of a column (1-based) of `node`'s row in the nodes table."""
    return page.inner_text(f'#nodes tr[data-node-id="{node.url}"] td:nth-child({column})')


def transition(page) -> tuple[str, float]:
    phase, fraction = page.eval_on_selector(
        "#transition", "t => [t.dataset.phase, t.dataset.fraction]"
    )
    return phase, float(fraction)


def test_dashboard_follows_the_cluster_through_join_leave_and_a_killed_node(fleet, browser):
    page = browser
    a, b, c = fleet.bootstrap(3)
    preload(fleet, History(), 5000, value_bytes=2000)
    # A little client traffic through a and b for the request rates and latencies.
    load = Workload(History(), [a.url, b.url], keys=50, threads=1)
    load.start()
    try:
        follow_the_cluster(fleet, page, a, b, c)
    finally:
        load.stop()


def follow_the_cluster(fleet: Fleet, page, a, b, c) -> None:
    shots = artifacts_dir("dashboard")

    # The page asks for the secret: the admin routes it reads refuse it without.
    page.goto(f"{a.url}/ui")
    page.wait_for_selector("#login:not([hidden])", timeout=PAGE_TIMEOUT_MS)
    assert page.is_hidden("#dashboard")
    page.fill("#secret", fleet.secret)
    page.click("#login-submit")

    # The page's percentiles: linear within the bucket that holds the rank (Prometheus'
    # histogram_quantile), none for an interval without requests.
    bounds, counts = [0.001, 0.01, 0.1], [0, 10, 10, 0]
    assert page.evaluate(f"quantile(0.5, {bounds}, {counts})") == pytest.approx(0.01)
    assert page.evaluate(f"quantile(0.75, {bounds}, {counts})") == pytest.approx(0.055)
    assert page.evaluate(f"quantile(0.25, {bounds}, {counts})") == pytest.approx(0.0055)
    assert page.evaluate(f"quantile(0.99, {bounds}, [0, 0, 0, 3])") == 0.1  # beyond the last
    assert page.evaluate(f"quantile(0.5, {bounds}, [0, 0, 0, 0])") is None

    # Ring, members and epoch.
    three = {a.url, b.url, c.url}
    wait_for(lambda: set(member_rows(page)) == three, 30, "three members on the page")
    wait_for(lambda: owners(page) == three, 30, "three owners on the ring")
    assert page.get_attribute("#epoch", "data-epoch") == "1"
    assert page.eval_on_selector_all("#ring path", "paths => paths.length") == 3 * 16
    shares = page.eval_on_selector_all("#ownership li", "i => i.map(x => +x.dataset.share)")
    assert abs(sum(shares) - 1.0) < 0.01
    wait_for(lambda: all(r["liveness"] == "up" for r in member_rows(page).values()), 30, "all up")
    wait_for(lambda: page.locator("#nodes tbody tr.up").count() == 3, 30, "three nodes' stats")
    wait_for(lambda: float(cell(page, a, 2)) > 0, 30, "a request rate for a")
    wait_for(lambda: cell(page, a, 6).endswith("ms"), 30, "a p99 latency for a")
    assert cell(page, a, 3) == "off"  # the test nodes run without RESP
    page.screenshot(path=str(shots / "1-three-nodes.png"), full_page=True)

    # A join: the progress bar advances while ranges stream, then the new member appears.
    d = fleet.start_joiner()
    with fleet.admin() as client:
        tid = client.join(d.url)["transition"]["id"]
    seen: list[float] = []

    def streaming_fraction() -> float | None:
        phase, fraction = transition(page)
        if phase == "streaming" and 0 < fraction < 1:
            seen.append(fraction)
            return fraction
        return None

    first = wait_for(streaming_fraction, 60, "the page to show the join streaming", 0.1)
    page.screenshot(path=str(shots / "2-join-streaming.png"), full_page=True)
    wait_for(lambda: transition(page)[1] > first, 60, f"the progress bar to advance past {first}")
    fleet.wait_transition(tid)
    fleet.members.append(d)
    four = three | {d.url}
    wait_for(lambda: set(member_rows(page)) == four, 30, "the new member on the page")
    wait_for(lambda: owners(page) == four, 30, "the new member owning tokens")
    wait_for(lambda: page.get_attribute("#epoch", "data-epoch") == "2", 30, "epoch 2")
    wait_for(lambda: member_rows(page)[d.url]["state"] == "Normal", 30, "the new member Normal")
    page.screenshot(path=str(shots / "3-after-join.png"), full_page=True)

    # A leave: the member is gone from the members and from the ring.
    fleet.leave(d)
    wait_for(lambda: set(member_rows(page)) == three, 30, "the member that left to be gone")
    wait_for(lambda: owners(page) == three, 30, "the ring without the member that left")
    page.screenshot(path=str(shots / "4-after-leave.png"), full_page=True)

    # A killed node turns red within 15 s (awaited by the browser, not slept).
    c.kill()
    page.wait_for_selector(
        f'#members tr[data-url="{c.url}"][data-liveness="down"]', timeout=KILLED_RED_WITHIN_MS
    )
    row = member_rows(page)[c.url]
    assert row["cls"] == "down" and row["color"] == "rgb(214, 40, 40)", row
    assert any(
        c.url.removeprefix("http://") in text
        for text in page.eval_on_selector_all(
            "#alerts li.critical", "items => items.map(i => i.textContent)"
        )
    )
    others = {url: r["liveness"] for url, r in member_rows(page).items() if url != c.url}
    assert others == {a.url: "up", b.url: "up"}
    page.screenshot(path=str(shots / "5-node-killed.png"), full_page=True)

    # Once the cluster has users, the page needs an admin user: the secret is refused with
    # the node's reason and the form stays. Any node serves it: b's page agrees.
    made = fleet.http.post(
        f"{a.url}/admin/users", json={"name": "ops", "role": "admin", "password": "ops password"}
    )
    assert made.status_code == 201, made.text
    page.goto(f"{b.url}/ui")
    page.fill("#secret", fleet.secret)
    page.click("#login-submit")
    page.wait_for_selector("#login:not([hidden])", timeout=PAGE_TIMEOUT_MS)
    wait_for(
        lambda: "admin credentials required" in page.inner_text("#login-error"),
        20,
        "the refused secret's reason on the form",
    )
    page.fill("#secret", "")
    page.fill("#user", "ops")
    page.fill("#password", "ops password")
    page.click("#login-submit")
    page.wait_for_selector(f'#members tr[data-url="{c.url}"][data-liveness="down"]')
    assert set(member_rows(page)) == three and owners(page) == three
    assert page.inner_text("#served-by") == f"via {b.url.removeprefix('http://')}"
    page.screenshot(path=str(shots / "6-via-another-node.png"), full_page=True)
