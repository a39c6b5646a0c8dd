"""A worker's settings, topics and context on the real services, for the ingest-loop integration tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from allocator import ChurnCurves
from models.bundle import load_bundle
from streams.adapters.allocation import make_allocate
from streams.adapters.memory import InMemoryRegistry
from streams.adapters.redis_store import RedisCreditLineStore, RedisFeatureStore, RedisScoreStore
from streams.app import WorkerContext
from streams.dataset import DEFAULT_DATA_DIR
from streams.settings import IngestSettings, KafkaSettings, Settings, TopicSettings, WorkerSettings
from tests.bundle_fixture import get_test_bundle


def worker_settings(unique_name: str, kafka: KafkaSettings, *, ingest: IngestSettings | None = None) -> Settings:
    """Settings of a worker with its own group and its own two-partition topics (nothing from the environment)."""
    return Settings(_env_prefix="RISKMON_TEST_UNUSED_", app_id=unique_name,
                    kafka=kafka.model_copy(update={"group_id": f"{unique_name}-g"}),
                    topics=TopicSettings(partitions=2).prefixed(f"{unique_name}-"),
                    worker=WorkerSettings(batch_size=50, batch_within_s=0.1, metrics_port=0),
                    ingest=ingest or IngestSettings())


def create_worker_topics(settings: Settings, topic_factory: Callable[..., Any]) -> None:
    t = settings.topics
    for name in (t.invoices, t.dlq, t.scores, t.credit_lines, t.allocations):
        topic_factory(partitions=2, name=name)


def redis_worker_context(settings: Settings, client: redis.Redis, prefix: str) -> WorkerContext:
    """The worker's context on real Redis under ``prefix``, the test bundle and the real registry."""
    return WorkerContext(
        settings=settings, features=RedisFeatureStore(client, prefix), scores=RedisScoreStore(client, prefix),
        lines=RedisCreditLineStore(client, prefix), registry=InMemoryRegistry.from_data_dir(DEFAULT_DATA_DIR),
        scorer=load_bundle(get_test_bundle()),
        allocate=make_allocate(ChurnCurves.from_csv(DEFAULT_DATA_DIR / "churn.csv")))
