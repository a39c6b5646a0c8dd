"""The worker's HTTP server locked down (issue 11 item 5): token for POST /allocate, no cross-origin requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streams.health import HealthServer
from streams.metrics import Metrics

TOKEN = "s3cret-token-for-tests"


class Calls:
    def __init__(self) -> None:
        self.allocations = 0

    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def allocate(self) -> dict[str, Any]:
        self.allocations += 1
        return {"ran": True}


async def _server(calls: Calls, token: str | None) -> HealthServer:
    server = HealthServer(0, Metrics(), calls.health, calls.allocate, token=token)
    await server.start()
    return server


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Calls]]:
    calls = Calls()
    server = await _server(calls, TOKEN)
    try:
        yield f"http://127.0.0.1:{server.port}", calls
    finally:
        await server.stop()


async def _request(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers or {}) as r:
        return r.status, await r.text()


async def test_post_allocate_needs_the_token(served: tuple[str, Calls]) -> None:
    base, calls = served
    status, body = await _request("POST", f"{base}/allocate")
    assert status == 401 and "token" in json.loads(body)["error"]
    status, _ = await _request("POST", f"{base}/allocate", {"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await _request("POST", f"{base}/allocate", {"Authorization": TOKEN})  # no scheme
    assert status == 401
    assert calls.allocations == 0
    status, body = await _request("POST", f"{base}/allocate", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body) == {"ran": True} and calls.allocations == 1


async def test_cross_origin_requests_are_refused_even_with_the_token(served: tuple[str, Calls]) -> None:
    base, calls = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await _request("POST", f"{base}/allocate", {**auth, "Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in json.loads(body)["error"]
    status, _ = await _request("POST", f"{base}/allocate", {**auth, "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _ = await _request("POST", f"{base}/allocate", {**auth, "Host": "rebound.example"})  # DNS rebinding
    assert status == 403
    assert calls.allocations == 0
    status, _ = await _request("GET", f"{base}/health", {"Origin": "http://evil.example"})
    assert status == 403
    # the server's own origin is fine
    status, _ = await _request("POST", f"{base}/allocate", {**auth, "Origin": base, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and calls.allocations == 1


async def test_health_and_metrics_stay_readable_on_loopback_without_a_token(served: tuple[str, Calls]) -> None:
    base, _ = served
    status, body = await _request("GET", f"{base}/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, body = await _request("GET", f"{base}/metrics")
    assert status == 200 and "riskmon_" in body


async def test_without_a_configured_token_state_changing_endpoints_are_off() -> None:
    calls = Calls()
    server = await _server(calls, None)
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = await _request("POST", f"{base}/allocate", {"Authorization": "Bearer anything"})
        assert status == 403 and "RISKMON_WORKER__HTTP_TOKEN" in json.loads(body)["error"]
        assert calls.allocations == 0
    finally:
        await server.stop()
