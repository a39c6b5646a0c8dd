"""The worker's small HTTP server: ``GET /health``, ``GET /metrics`` (Prometheus), ``POST /allocate``.

Locked down (issue 11): every request from a browser page of another origin is refused with 403
(an ``Origin`` that is not this server's own, or ``Sec-Fetch-Site`` other than ``same-origin``/``none``),
and so is a ``Host`` that is not this server's address when it listens on loopback (DNS rebinding).
State-changing requests (``POST /allocate``) also need ``Authorization: Bearer <token>``, the
worker's ``RISKMON_WORKER__HTTP_TOKEN`` (``scripts/services`` generates one into the credentials
file); without a configured token they are refused. ``GET /health`` and ``GET /metrics`` need no token.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from streams.metrics import Metrics

log = logging.getLogger("riskmon.health")

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_SAFE_FETCH_SITES = ("same-origin", "none")


def cross_origin_reason(headers: Any, host: str, port: int | None) -> str | None:
    """Why a request with ``headers`` counts as cross-origin for a server on ``host:port``, or None.

    >>> cross_origin_reason({"Origin": "http://evil.example"}, "127.0.0.1", 9108)
    'cross-origin request (Origin http://evil.example)'
    >>> cross_origin_reason({"Origin": "http://127.0.0.1:9108", "Host": "127.0.0.1:9108"}, "127.0.0.1", 9108) is None
    True
    >>> cross_origin_reason({"Host": "attacker.example:9108"}, "127.0.0.1", 9108)
    'Host attacker.example:9108 is not this loopback server'
    >>> cross_origin_reason({"Sec-Fetch-Site": "cross-site"}, "127.0.0.1", 9108)
    'cross-origin request (Sec-Fetch-Site cross-site)'
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in _SAFE_FETCH_SITES:
        return f"cross-origin request (Sec-Fetch-Site {site})"
    host_header = headers.get("Host")
    if host_header is not None and host in _LOOPBACK:
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        if name not in _LOOPBACK:
            return f"Host {host_header} is not this loopback server"
    origin = headers.get("Origin")
    if origin is not None:
        allowed = {f"http://{h}:{port}" for h in (*_LOOPBACK, host)} if host in _LOOPBACK else {f"http://{host}:{port}"}
        if host_header:
            allowed.add(f"http://{host_header}")
        if origin not in allowed:
            return f"cross-origin request (Origin {origin})"
    return None


class HealthServer:
    """Serves health and metrics on ``port`` (0: an ephemeral port, see :attr:`port` after start)."""

    def __init__(self, port: int, metrics: Metrics, health: Callable[[], Awaitable[dict[str, Any]]],
                 allocate: Callable[[], Awaitable[dict[str, Any]]] | None = None, host: str = "127.0.0.1",
                 token: str | None = None) -> None:
        self._port, self._host, self._token = port, host, token
        self._metrics, self._health, self._allocate = metrics, health, allocate
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._same_origin_only])
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

    @web.middleware
    async def _same_origin_only(self, request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        reason = cross_origin_reason(request.headers, self._host, self.port)
        if reason is not None:
            log.warning("refused %s %s: %s", request.method, request.path, reason)
            return _refusal(403, reason)
        return await handler(request)

    def _authorized(self, request: web.Request) -> web.Response | None:
        """None when the request carries the token, else the refusal to send."""
        if not self._token:
            return _refusal(403, "state-changing endpoints are off: this worker has no RISKMON_WORKER__HTTP_TOKEN")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token.encode()):
            log.warning("refused %s %s: missing or wrong bearer token", request.method, request.path)
            return _refusal(401, "missing or wrong token: send Authorization: Bearer <RISKMON_WORKER__HTTP_TOKEN>",
                            {"WWW-Authenticate": "Bearer"})
        return None

    async def _get_health(self, request: web.Request) -> web.Response:
        body = await self._health()
        status = 200 if body.get("status") == "ok" else 503
        return web.Response(status=status, text=json.dumps(body, default=str), content_type="application/json")

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _post_allocate(self, request: web.Request) -> web.Response:
        refusal = self._authorized(request)
        if refusal is not None:
            return refusal
        if self._allocate is None:
            return web.Response(status=404, text="no allocator here")
        body = await self._allocate()
        return web.Response(status=200 if body.get("ran") else 409, text=json.dumps(body, default=str),
                            content_type="application/json")


def _refusal(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": reason}), content_type="application/json",
                        headers=headers)
