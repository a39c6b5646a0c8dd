"""The Redis feature, score and line stores pass their contract suites on a real Redis Cluster.

Against ``RISKMON_TEST_REDIS_CLUSTER_URL`` when set (e.g. ``redis+cluster://127.0.0.1:7000/0``, what
``RISKMON_REDIS_CLUSTER=3 scripts/services up redis`` prints); otherwise the module starts its own
cluster of three masters and three replicas through ``scripts/services`` on free ports (as the
cluster kill tests do) and stops it afterwards, so ``make test`` runs these suites on a fresh clone.
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


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    if URL:
        yield URL
        return
    from tests.e2e.clusters import start_cluster

    started = start_cluster("redis", "redis3-contract")
    if isinstance(started, str):
        pytest.skip(f"Redis Cluster could not start: {started}")
    try:
        yield f"redis+cluster://127.0.0.1:{started.base_port}/0"
    finally:
        started.stop()


@pytest.fixture
def cluster(cluster_url: str) -> Iterator[tuple[Any, str]]:
    client = connect(RedisSettings(url=cluster_url))
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
