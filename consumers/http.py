"""/healthz, /readyz and /metrics on BATCHYARD_HTTP_PORT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.app import App
from consumers.gauges import Sampler


@asynccontextmanager
async def serve(app: App, port: int, bound: Callable[[], bool]) -> AsyncIterator[int]:
    """Serve the probes while the block runs; port 0 serves nothing."""
    if port == 0:
        yield 0
        return
    sampler = Sampler(app)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        checks = {"nats": app.nc.is_connected, "consumers": bound(),
                  "postgres": await _db_ok(app)}
        return web.json_response(checks, status=200 if all(checks.values()) else 503)

    async def metrics(_: web.Request) -> web.Response:
        await sampler.refresh()
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    web_app = web.Application()
    web_app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                        web.get("/metrics", metrics)])
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def _db_ok(app: App) -> bool:
    try:
        async with asyncio.timeout(2):
            return await app.store.ping()
    except Exception:
        return False
