"""LocalService over the real storage engine: versions, TTL, deletes and the local key listing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from limedb.cluster.local import LocalService
from limedb.cluster.service import Unavailable
from limedb.hlc import millis_of, pack
from limedb.storage import Engine, EngineOptions


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine.open(tmp_path / "data", EngineOptions(durability="none"))
    yield engine
    engine.close()


def service_over(engine: Engine) -> LocalService:
    service = LocalService(engine, node_id="n1", node_url="http://n1:8484", vnodes=4)
    asyncio.run(service.start())
    return service


def test_writes_are_stamped_after_everything_the_engine_has_seen(tmp_path: Path):
    # Recovery advances the engine's clock past every stored version, however far ahead of the
    # wall clock (a clock stepped back since it was written): a write stamped by any other
    # clock could be ordered before an older version and silently lose.
    options = EngineOptions(durability="sync")
    with Engine.open(tmp_path / "data", options) as before:
        future = pack(millis_of(before.hlc.now()) + 3_600_000)
        before.put(b"stored", b"old", ts=future)
    engine = Engine.open(tmp_path / "data", options)
    try:
        service = service_over(engine)
        ts = asyncio.run(service.put(b"k", b"v"))
        assert ts > future
        assert asyncio.run(service.get(b"k")).value == b"v"
    finally:
        engine.close()


def test_delete_reports_whether_a_live_value_existed_and_hides_it(engine):
    service = service_over(engine)
    asyncio.run(service.put(b"k", b"v"))
    assert asyncio.run(service.delete(b"k")) is True
    assert asyncio.run(service.delete(b"k")) is False
    assert asyncio.run(service.get(b"k")).value is None


def test_expired_values_read_as_absent(engine):
    service = service_over(engine)
    asyncio.run(service.put(b"short", b"v", ttl_ms=1))
    asyncio.run(service.put(b"long", b"v", ttl_ms=60_000))
    asyncio.run(asyncio.sleep(0.01))
    assert asyncio.run(service.get(b"short")).value is None
    assert asyncio.run(service.get(b"long")).value == b"v"
    assert asyncio.run(service.get(b"long")).expires_at_ms is not None


def test_local_items_page_through_live_keys_in_a_stable_order(engine):
    service = service_over(engine)
    for i in range(30):
        asyncio.run(service.put(f"key-{i}".encode(), str(i).encode()))
    asyncio.run(service.delete(b"key-7"))
    everything = service.local_items(None, 100)
    assert len(everything) == 29 == service.local_count()
    pages, after = [], None
    while True:
        page = service.local_items(after, 8)
        if not page:
            break
        pages += page
        after = page[-1][0]
    assert pages == everything
    assert b"key-7" not in {k for k, _ in everything}


def test_cluster_view_is_a_single_active_member_owning_every_token(engine):
    view = service_over(engine).cluster_view()
    assert [m.url for m in view.members] == ["http://n1:8484"]
    assert view.peers == ()
    assert len(view.tokens) == 4
    assert all(url == "http://n1:8484" for _, url in view.tokens)


def test_a_write_refused_by_a_closed_engine_is_unavailable_not_a_crash(tmp_path):
    engine = Engine.open(tmp_path / "closed", EngineOptions(durability="none"))
    service = service_over(engine)
    engine.close()
    with pytest.raises(Unavailable):
        asyncio.run(service.put(b"k", b"v"))
    with pytest.raises(Unavailable):
        asyncio.run(service.delete(b"k"))
