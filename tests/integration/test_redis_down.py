"""When a service is down, the errors say so in one clear line and name the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import check_kafka, check_redis

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probes_report_the_reason_for_a_closed_port() -> None:
    port = closed_port()
    assert "Connection refused" in (check_redis(f"redis://127.0.0.1:{port}/0") or "")
    assert "Connection refused" in (check_kafka(f"127.0.0.1:{port}") or "")


def test_redis_store_raises_store_unavailable_naming_the_fix() -> None:
    from streams.adapters.redis_store import RedisFeatureStore
    from streams.errors import StoreUnavailable

    client = redis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    store = RedisFeatureStore(client, prefix="pytest-down")
    with pytest.raises(StoreUnavailable) as info:
        store.apply("E1", "ev-1", {"n": 1})
    message = str(info.value)
    assert "\n" not in message
    assert "Redis unavailable" in message and "scripts/services up" in message
    assert info.value.retriable is True


def test_services_test_fails_not_skips_when_redis_is_down() -> None:
    """A ``services`` test run without Redis fails with the hint instead of passing or skipping."""
    env = {
        **os.environ,
        "RISKMON_REDIS__URL": f"redis://127.0.0.1:{closed_port()}/0",
        "RISKMON_TEST_SERVICE_WAIT_S": "0",
    }
    target = "tests/integration/test_services.py::test_redis_ping_and_idempotent_lua"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", target],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Redis is not answering at" in out and "run scripts/services up" in out
    assert "1 error" in out or "1 failed" in out
