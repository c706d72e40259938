"""Issue 15: the ring-record format a node writes, announces, and refuses when it is newer."""

from __future__ import annotations

import orjson
import pytest
from limedb import __version__
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RING_FORMAT, RingRecord, UnreadableFormat
from limedb.cluster.ring.store import RingStore
from limedb.cluster.status import announced


def _record() -> RingRecord:
    return RingRecord(Ring(["http://a", "http://b", "http://c"], vnodes=4), 3)


def test_a_record_carries_its_format_and_reads_back():
    raw = _record().to_record()
    assert raw["format"] == RING_FORMAT
    assert RingRecord.from_record(raw) == _record()


def test_a_record_of_the_first_format_without_the_field_still_reads():
    raw = _record().to_record()
    del raw["format"]
    assert RingRecord.from_record(raw) == _record()


def test_a_newer_format_is_refused_with_a_message_that_says_so():
    raw = {**_record().to_record(), "format": RING_FORMAT + 1}
    with pytest.raises(UnreadableFormat, match="newer than this node reads"):
        RingRecord.from_record(raw)


def test_a_node_does_not_start_from_a_ring_file_of_a_newer_format(tmp_path):
    store = RingStore(tmp_path)
    store.save(_record())
    assert store.load() == _record()
    raw = orjson.loads(store.path.read_bytes())
    store.path.write_bytes(orjson.dumps({**raw, "format": RING_FORMAT + 1}))
    with pytest.raises(ValueError, match="downgrade across ring formats"):
        store.load()


def test_every_node_announces_its_version_and_ring_format():
    assert announced() == {"version": __version__, "ring_format": RING_FORMAT}
