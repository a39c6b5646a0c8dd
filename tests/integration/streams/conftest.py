"""Fixtures for the stream's integration tests (real Redis and Kafka from scripts/services)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from streams.adapters.redis_store import clear_prefix


@pytest.fixture
def stream_redis_url(redis_url: str) -> str:
    """The root fixture's URL (with the services' Redis credentials when they are locked down)."""
    return redis_url


@pytest.fixture
def stream_prefix(request: pytest.FixtureRequest) -> str:
    return f"test-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")


@pytest.fixture
def redis_client(stream_redis_url: str, stream_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stream_redis_url)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {stream_redis_url}: {exc} (run scripts/services up)")
    yield client
    clear_prefix(client, stream_prefix)
    client.close()
