"""A write the storage engine refuses because no file descriptor is left (it could not create
the table its flush needs) reaches the client as an overload, not as a full disk: HTTP 503 with
Retry-After and an error that says descriptors ran out, on the fast path and on FastAPI's
routes alike; the health says `outOfDescriptors` (not `full`) and `degraded`; /metrics counts
the refusals with the other requests refused for want of a descriptor; writes resume by
themselves once a file can be created, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from limedb.api import create_app
from limedb.cluster.local import LocalService
from limedb.config import load_config
from limedb.storage import Engine, EngineOptions
from support.descriptors import DescriptorLimitedFS

# A small memtable, so that a few writes need a flush (and its table file).
OPTIONS = dict(
    memtable_bytes=4096,
    l0_compaction_trigger=4,
    target_file_bytes=8192,
    block_bytes=512,
    compaction_rate_bytes_per_s=0,
    background_threads=True,
)


async def _until_written(client: httpx.AsyncClient, path: str) -> None:
    for _ in range(500):  # flush retries back off: 0.05 s .. 1 s
        if (await client.put(path, content=b"after")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("writes did not resume once descriptors were free again")


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "FastAPI"])
def test_a_write_refused_for_want_of_descriptors_is_a_503_that_says_so(fast_path: bool):
    fs = DescriptorLimitedFS()
    fs.only = ".sst"
    engine = Engine.open("/db", EngineOptions(durability="sync", **OPTIONS), fs=fs)
    config = load_config({"port": 8484, "fast_path": fast_path}, {})

    async def scenario() -> None:
        service = LocalService(engine, node_id="n", node_url="http://node")
        await service.start()
        app = create_app(service, config)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            acked: dict[str, bytes] = {}
            refused: list[httpx.Response] = []
            fs.exhausted = True
            for i in range(400):
                value = b"v%03d" % i * 50
                if i % 2:
                    response = await client.put(f"/v1/kv/k{i}", content=value)
                else:
                    response = await client.post(
                        "/v1/batch", json={"put": [{"key": f"k{i}", "value": value.decode()}]}
                    )
                assert response.status_code in (200, 503), response.text
                if response.status_code == 200:
                    acked[f"k{i}"] = value
                else:
                    refused.append(response)
                if len(refused) >= 6:
                    break
            assert refused, "no write was refused while no table could be created"
            for response in refused:
                assert response.headers["retry-after"] == "1"
                error = response.json()["error"]
                assert error.startswith("out of file descriptors: "), error
                assert "Too many open files" in error and "disk full" not in error, error

            health = (await client.get("/api/v1/health")).json()
            assert health["status"] == "degraded"
            assert health["disk"]["outOfDescriptors"] is True
            assert health["disk"]["full"] is False
            metrics = (await client.get("/metrics")).text
            counted = re.search(r"^limedb_descriptor_exhaustion_total (\S+)$", metrics, re.M)
            assert counted and float(counted.group(1)) == len(refused), counted
            assert re.search(r"^limedb_storage_out_of_descriptors 1\.0$", metrics, re.M)

            fs.exhausted = False
            await _until_written(client, "/v1/kv/after")
            health = (await client.get("/api/v1/health")).json()
            assert health["disk"]["outOfDescriptors"] is False
            assert health["status"] == "healthy"
            for key, value in acked.items():
                assert (await client.get(f"/v1/kv/{key}")).content == value, key
        await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.close()
