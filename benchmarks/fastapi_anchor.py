"""The benchmark anchor: an idiomatic FastAPI app doing the same storage calls as the node.

Path parameters, a pydantic request model, dict responses serialized by FastAPI and
HTTPException for a missing key - what a FastAPI user would write - over the same LocalService
and storage engine, served by uvicorn with uvloop and httptools like the node.
Run: python benchmarks/fastapi_anchor.py --port 9000 --data-dir /tmp/anchor --durability sync
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from limedb.cluster.local import LocalService
from limedb.storage import Engine, EngineOptions
from pydantic import BaseModel


class SetRequest(BaseModel):
    key: str
    value: str


def build(service: LocalService) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/get/{key:path}")
    async def get_key(key: str) -> dict:
        result = await service.get(key.encode())
        if result.value is None:
            raise HTTPException(status_code=404, detail="key not found")
        return {"value": result.value.decode(), "nodeUrl": result.owner_url}

    @app.post("/api/v1/set", response_class=PlainTextResponse)
    async def set_key(body: SetRequest) -> str:
        await service.put(body.key.encode(), body.value.encode())
        return "OK"

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--durability", default="sync")
    # The node's own fsync period (`sync_interval_ms`, 50 ms by default), so that both servers
    # run the engine with the same options in periodic mode too.
    parser.add_argument("--sync-interval-ms", type=int, default=50)
    args = parser.parse_args()
    options = EngineOptions(durability=args.durability, periodic_ms=args.sync_interval_ms)
    engine = Engine.open(args.data_dir, options)
    url = f"http://{args.host}:{args.port}"
    service = LocalService(engine, node_id=url, node_url=url)
    uvicorn.run(
        build(service),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
    engine.close()


if __name__ == "__main__":
    main()
