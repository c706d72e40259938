"""Range streaming as tables, one node's side each (real engines and files): a source cuts
token ranges into a table served in chunks, a target receives the chunks (relayed to it, or
pulled by itself from the source) and ingests the table only when its size and CRC32C match,
and leaves no staged file behind either way."""

from __future__ import annotations

import asyncio

import pytest
from limedb.cluster import rpc
from limedb.cluster.keys import MAX_TOKEN, storage_key
from limedb.cluster.table_streams import (
    CUT_REPLY,
    DROP,
    INGEST,
    INGESTED,
    READ,
    WRITE_HEAD,
    TableStreams,
    encode_cut,
    encode_fetch,
    encode_fetch_shared,
)
from limedb.hlc import HLC
from limedb.storage import Engine, EngineOptions

HALF = MAX_TOKEN // 2
OPTS = EngineOptions(background_threads=False, durability="none")


def _nodes(tmp_path, call=None):
    source = Engine.open(tmp_path / "src" / "data", OPTS)
    target = Engine.open(tmp_path / "dst" / "data", OPTS)
    for i in range(500):
        source.put(storage_key(b"key%d" % i), b"value%d" % i)
    source.flush()
    for i in range(0, 500, 10):
        source.delete(storage_key(b"key%d" % i))
    return (
        source,
        target,
        TableStreams(source, tmp_path / "src", HLC(), None),
        TableStreams(target, tmp_path / "dst", HLC(), None, call),
    )


async def _relay(src: TableStreams, dst: TableStreams, tid: int, corrupt: bool = False):
    entries, size, crc = CUT_REPLY.unpack(await src.handle_cut(encode_cut(tid, [(0, HALF)], 0.0)))
    offset = 0
    while offset < size:
        data = await src.handle_read(READ.pack(tid, offset, 1000))
        if corrupt and offset == 0:
            data = bytes([data[0] ^ 1]) + data[1:]
        await dst.handle_write(WRITE_HEAD.pack(tid, offset) + data)
        offset += len(data)
    return entries, size, crc


def test_a_cut_range_arrives_with_its_versions_and_tombstones(tmp_path):
    source, target, src, dst = _nodes(tmp_path)

    async def main() -> None:
        entries, size, crc = await _relay(src, dst, 7)
        assert dst.stats()["table_transfers_receiving"] == 1
        ingested, _ = INGESTED.unpack(await dst.handle_ingest(INGEST.pack(7, size, crc)))
        assert ingested == entries
        await src.handle_drop(DROP.pack(7))

    asyncio.run(main())
    end = (HALF + 1).to_bytes(8, "big")
    want = dict(source.iter_range(None, end, include_tombstones=True))
    assert want and dict(target.iter_range(include_tombstones=True)) == want
    assert any(v.tombstone for v in want.values())
    assert not list((tmp_path / "src" / "streaming").iterdir())
    assert not list((tmp_path / "dst" / "streaming").iterdir())
    assert dst.stats()["table_transfers_receiving"] == 0


def test_a_table_damaged_on_the_way_is_refused_and_nothing_is_ingested(tmp_path):
    _, target, src, dst = _nodes(tmp_path)

    async def main() -> None:
        _, size, crc = await _relay(src, dst, 9, corrupt=True)
        with pytest.raises(rpc.RpcError, match="checksum"):
            await dst.handle_ingest(INGEST.pack(9, size, crc))

    asyncio.run(main())
    assert target.scan() == []
    assert not list((tmp_path / "dst" / "streaming").iterdir())


def _pulling_nodes(tmp_path):
    """Source and target whose target reaches the source's TABLE_READ by node id (in-process,
    in place of the RPC connection)."""
    nodes: dict[str, TableStreams] = {}

    async def call(node: str, kind: int, payload: bytes, timeout_s: float) -> bytes:
        assert kind == rpc.TABLE_READ
        return await nodes[node].handle_read(payload)

    source, target, src, dst = _nodes(tmp_path, call)
    nodes["source"] = src
    return source, target, src, dst


@pytest.mark.parametrize("chunk", [1000, 1 << 22])
def test_a_target_pulls_a_cut_table_from_its_source_and_ingests_it(tmp_path, chunk):
    source, target, src, dst = _pulling_nodes(tmp_path)

    async def main() -> None:
        reply = await src.handle_cut(encode_cut(3, [(0, HALF)], 0.0))
        entries, size, crc = CUT_REPLY.unpack(reply)
        fetched = await dst.handle_fetch(encode_fetch(3, size, crc, chunk, "source"))
        assert INGESTED.unpack(fetched)[0] == entries
        await src.handle_drop(DROP.pack(3))

    asyncio.run(main())
    end = (HALF + 1).to_bytes(8, "big")
    want = dict(source.iter_range(None, end, include_tombstones=True))
    assert want and dict(target.iter_range(include_tombstones=True)) == want
    assert dst.stats()["table_bytes_received"] > 0 and dst.stats()["tables_pulled"] == 1
    assert not list((tmp_path / "src" / "streaming").iterdir())
    assert not list((tmp_path / "dst" / "streaming").iterdir())
    assert dst.stats()["table_transfers_receiving"] == 0


@pytest.mark.parametrize("wrong", ["checksum", "size", "table id"])
def test_a_pulled_table_that_does_not_match_is_refused_and_nothing_is_ingested(tmp_path, wrong):
    _, target, src, dst = _pulling_nodes(tmp_path)

    async def main() -> None:
        _, size, crc = CUT_REPLY.unpack(await src.handle_cut(encode_cut(5, [(0, HALF)], 0.0)))
        tid = 6 if wrong == "table id" else 5
        crc ^= 1 if wrong == "checksum" else 0
        size += 1 if wrong == "size" else 0
        with pytest.raises(rpc.RpcError):
            await dst.handle_fetch(encode_fetch(tid, size, crc, 4096, "source"))

    asyncio.run(main())
    assert target.scan() == []
    assert not list((tmp_path / "dst" / "streaming").iterdir())
    assert dst.stats()["table_transfers_receiving"] == 0


def test_the_pulls_of_one_session_are_paced_together_and_each_table_arrives_whole(
    tmp_path, monkeypatch
):
    """Two tables pulled at once in one session go by one pace, which counts every chunk of
    both (so a pull alone gets the whole rate, two share it); another session has its own."""
    source, target, src, dst = _pulling_nodes(tmp_path)
    paced: list[tuple[int, int]] = []

    async def pace(self, nbytes: int) -> None:  # noqa: ANN001 - a Throttle
        paced.append((id(self), nbytes))

    monkeypatch.setattr("limedb.cluster.streaming.Throttle.pace", pace)

    async def main() -> list[tuple[int, int, int, int]]:
        cuts = []
        for tid, ranges in (
            (7, [(0, HALF // 2)]),
            (8, [(HALF + 1, MAX_TOKEN)]),
            (9, [(HALF // 2 + 1, HALF)]),
        ):
            cuts.append(
                (tid, *CUT_REPLY.unpack(await src.handle_cut(encode_cut(tid, ranges, 0.0))))
            )
        pulls = [
            dst.handle_fetch_shared(
                encode_fetch_shared(tid, size, crc, 1000, "source", 50_000, session)
            )
            for (tid, _, size, crc), session in zip(cuts, (1, 1, 2), strict=True)
        ]
        replies = await asyncio.gather(*pulls)
        assert [INGESTED.unpack(r)[0] for r in replies] == [c[1] for c in cuts]
        for tid, *_ in cuts:
            await src.handle_drop(DROP.pack(tid))
        return cuts

    cuts = asyncio.run(main())
    sizes = {tid: size for tid, _, size, _ in cuts}
    paces = {}
    for pacer, nbytes in paced:
        paces[pacer] = paces.get(pacer, 0) + nbytes
    # Session 1's two tables through one pace, session 2's through another.
    assert sorted(paces.values()) == sorted([sizes[7] + sizes[8], sizes[9]])
    want = dict(source.iter_range(include_tombstones=True))
    assert want and dict(target.iter_range(include_tombstones=True)) == want
    assert not list((tmp_path / "dst" / "streaming").iterdir())
