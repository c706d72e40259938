"""The app in-process, over the real storage engine: a node still recovering answers 503 with
Retry-After (and /livez 200), and the raw-ASGI fast path answers exactly like FastAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from limedb.api import attach_service, create_app
from limedb.cluster.local import LocalService
from limedb.config import load_config
from limedb.storage import Engine, EngineOptions


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine.open(tmp_path / "data", EngineOptions(durability="none"))
    yield engine
    engine.close()


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


def test_a_recovering_node_is_alive_but_not_ready_and_refuses_data_with_retry_after(engine):
    config = load_config({"port": 8484}, {})
    app = create_app(None, config)

    async def scenario() -> list[httpx.Response]:
        async with client_for(app) as client:
            before = [
                await client.get("/livez"),
                await client.get("/readyz"),
                await client.get("/api/v1/get/k"),
                await client.post("/api/v1/set", json={"key": "k", "value": "v"}),
                await client.get("/api/v1/health"),
            ]
            service = LocalService(engine, node_id="n", node_url="http://node")
            await service.start()
            attach_service(app, service)
            after = [await client.get("/readyz"), await client.get("/api/v1/get/k")]
            return before + after

    live, ready, get, put, health, ready_after, get_after = run(scenario())
    assert live.status_code == 200
    for refused in (ready, get, put, health):
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "error" in refused.json()
    assert ready_after.status_code == 200
    assert get_after.status_code == 404


REQUESTS = [
    ("POST", "/api/v1/set", {"json": {"key": "a b?#%é", "value": "v1"}}),
    ("GET", "/api/v1/get/a%20b%3F%23%25%C3%A9", {}),
    ("GET", "/api/v1/get/", {}),
    ("GET", "/api/v1/get/absent", {}),
    ("POST", "/api/v1/set", {"content": b"{oops"}),
    ("POST", "/api/v1/set", {"json": {"key": "", "value": "x"}}),
    ("POST", "/api/v1/set", {"json": {"key": "k", "value": "x" * (1024 * 1024 + 1)}}),
    ("DELETE", "/api/v1/del/a%20b%3F%23%25%C3%A9", {}),
    ("DELETE", "/api/v1/del/a%20b%3F%23%25%C3%A9", {}),
    ("PUT", "/v1/kv/raw%2Fkey", {"content": b"\x00\xff"}),
    ("GET", "/v1/kv/raw%2Fkey", {}),
    ("PUT", "/v1/kv/raw?ttl=-1", {"content": b"x"}),
    ("PUT", "/v1/kv/big", {"content": b"x" * (1024 * 1024 + 1)}),
    ("DELETE", "/v1/kv/raw%2Fkey", {}),
    ("GET", "/v1/kv/raw%2Fkey", {}),
]


def answers(engine: Engine, fast_path: bool) -> list[tuple[int, str, bytes]]:
    config = load_config({"port": 8484, "fast_path": fast_path}, {})

    async def scenario() -> list[tuple[int, str, bytes]]:
        service = LocalService(engine, node_id="n", node_url="http://node")
        await service.start()
        app = create_app(service, config)
        out = []
        async with client_for(app) as client:
            for method, path, kwargs in REQUESTS:
                response = await client.request(method, path, **kwargs)
                kind = response.headers["content-type"].split(";")[0]
                body = response.content
                if response.status_code >= 400:
                    body = b"error" if "error" in response.json() else body
                elif path.startswith("/api/v1/get/"):
                    # The version's fresh HLC stamp differs between the two runs.
                    body = orjson.dumps({**orjson.loads(body), "timestamp_micros": "fresh"})
                elif path.startswith("/api/v1/get/"):
                    # The version's write time differs between the two runs; its presence not.
                    fields = response.json()
                    assert fields.pop("timestamp_micros") > 0
                    body = repr(sorted(fields.items())).encode()
                out.append((response.status_code, kind, body))
        return out

    return run(scenario())


def test_fast_path_and_fastapi_routes_give_the_same_answers(tmp_path):
    results = []
    for fast_path in (True, False):
        engine = Engine.open(tmp_path / f"fast-{fast_path}", EngineOptions(durability="none"))
        try:
            results.append(answers(engine, fast_path))
        finally:
            engine.close()
    fast, framework = results
    for request, a, b in zip(REQUESTS, fast, framework, strict=True):
        if request[0] == "PUT" and a[0] == 200:
            continue  # the body carries a fresh HLC timestamp
        assert a == b, request[:2]
    assert [status for status, _, _ in fast] == [
        200, 200, 400, 404, 400, 400, 413, 200, 200, 200, 200, 400, 413, 200, 404
    ]  # fmt: skip
