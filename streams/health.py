"""The worker's small HTTP server: ``GET /health``, ``GET /metrics`` (Prometheus), ``POST /allocate``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from streams.metrics import Metrics

log = logging.getLogger("riskmon.health")


class HealthServer:
    """Serves health and metrics on ``port`` (0: an ephemeral port, see :attr:`port` after start)."""

    def __init__(self, port: int, metrics: Metrics, health: Callable[[], Awaitable[dict[str, Any]]],
                 allocate: Callable[[], Awaitable[dict[str, Any]]] | None = None, host: str = "127.0.0.1") -> None:
        self._port, self._host = port, host
        self._metrics, self._health, self._allocate = metrics, health, allocate
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_post("/allocate", self._post_allocate)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("health and metrics on http://%s:%s/health /metrics", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_health(self, request: web.Request) -> web.Response:
        body = await self._health()
        status = 200 if body.get("status") == "ok" else 503
        return web.Response(status=status, text=json.dumps(body, default=str), content_type="application/json")

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _post_allocate(self, request: web.Request) -> web.Response:
        if self._allocate is None:
            return web.Response(status=404, text="no allocator here")
        body = await self._allocate()
        return web.Response(status=200 if body.get("ran") else 409, text=json.dumps(body, default=str),
                            content_type="application/json")
