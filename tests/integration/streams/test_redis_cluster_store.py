"""The Redis feature, score and line stores pass their contract suites on a real Redis Cluster.

Needs ``RISKMON_TEST_REDIS_CLUSTER_URL`` (e.g. ``redis+cluster://127.0.0.1:7000/0``, what
``RISKMON_REDIS_CLUSTER=3 scripts/services up redis`` prints); skipped, with that reason, without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from streams.adapters.redis_store import (
    RedisCreditLineStore,
    RedisFeatureStore,
    RedisScoreStore,
    clear_prefix,
    connect,
)
from streams.settings import RedisSettings
from tests.unit.streams.contracts import CreditLineStoreContract, FeatureStoreContract, ScoreStoreContract

pytestmark = pytest.mark.services
URL = os.environ.get("RISKMON_TEST_REDIS_CLUSTER_URL", "")


@pytest.fixture
def cluster() -> Iterator[tuple[Any, str]]:
    if not URL:
        pytest.skip("set RISKMON_TEST_REDIS_CLUSTER_URL (RISKMON_REDIS_CLUSTER=3 scripts/services up redis prints it)")
    client = connect(RedisSettings(url=URL))
    prefix = f"test-cluster-{uuid.uuid4().hex[:8]}"
    yield client, prefix
    clear_prefix(client, prefix)
    client.close()


def test_the_url_scheme_selects_the_cluster_client(cluster: tuple[Any, str]) -> None:
    import redis.cluster

    assert isinstance(cluster[0], redis.cluster.RedisCluster)


class TestClusterFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self, cluster: tuple[Any, str]) -> RedisFeatureStore:
        return RedisFeatureStore(*cluster)


class TestClusterScoreStore(ScoreStoreContract):
    @pytest.fixture
    def store(self, cluster: tuple[Any, str]) -> RedisScoreStore:
        return RedisScoreStore(*cluster)


class TestClusterCreditLineStore(CreditLineStoreContract):
    @pytest.fixture
    def store(self, cluster: tuple[Any, str]) -> RedisCreditLineStore:
        return RedisCreditLineStore(*cluster)
