"""The worker's producer after a broker lost its state: replaced, never stuck (issue 11, Kafka outage).

aiokafka's idempotent producer ends its sender task on ``OutOfOrderSequenceNumber`` (a broker back
from an outage without the producer's sequence numbers); every later send fails. The fake below
behaves that way, so the test shows the handle starting a successor and the retry going through.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from streams.adapters.kafka import KafkaPublisher, ProducerHandle
from streams.errors import PublishFailed
from streams.events import DeadLetter
from tests.unit.streams.test_pipeline import NOW


class FakeProducer:
    """Sends succeed until ``fail_with`` is set; after a fatal error every send fails (a dead sender)."""

    def __init__(self, log: list[tuple[int, str, bytes]], ident: int, *, fatal: bool = False,
                 start_fails: int = 0) -> None:
        self.log, self.ident, self.fatal, self.start_fails = log, ident, fatal, start_fails
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.start_fails:
            self.start_fails -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        assert self.started and not self.stopped
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fatal:
            fut.set_exception(OutOfOrderSequenceNumber())
        else:
            self.log.append((self.ident, topic, key or b""))
            fut.set_result(None)
        return fut


def _letter() -> DeadLetter:
    return DeadLetter(source_topic="invoices", source_partition=0, source_offset=7, key="E1", reason="json_invalid",
                      error="Expecting value: line 1 column 1 (char 0)", raw_base64="bm90IGpzb24=", failed_at=NOW)


@pytest.mark.asyncio
async def test_a_producer_whose_state_was_lost_is_replaced_and_the_retry_is_published() -> None:
    sent: list[tuple[int, str, bytes]] = []
    made: list[FakeProducer] = []

    def factory() -> Any:
        p = FakeProducer(sent, len(made), fatal=not made)  # the first producer dies on its first send
        made.append(p)
        return p

    handle = ProducerHandle(factory)
    await handle.start()
    publisher: KafkaPublisher[DeadLetter] = KafkaPublisher(handle, "dead-letters")
    with pytest.raises(PublishFailed) as failed:
        await publisher.publish_many([("E1", _letter())])
    assert failed.value.retriable, "a lost producer state must be waited out, not treated as a refused message"
    assert made[0].stopped and handle.replaced == 1 and len(made) == 2
    await publisher.publish_many([("E1", _letter())])  # the core's retry
    assert sent == [(1, "dead-letters", b"E1")]
    await handle.stop()
    assert made[1].stopped


@pytest.mark.asyncio
async def test_a_successor_that_cannot_start_yet_is_retried_until_the_broker_answers() -> None:
    sent: list[tuple[int, str, bytes]] = []
    made: list[FakeProducer] = []

    def factory() -> Any:
        p = FakeProducer(sent, len(made), fatal=not made, start_fails=1 if len(made) == 1 else 0)
        made.append(p)
        return p

    handle = ProducerHandle(factory)
    await handle.start()
    publisher: KafkaPublisher[DeadLetter] = KafkaPublisher(handle, "dead-letters")
    with pytest.raises(PublishFailed):
        await publisher.publish_many([("E1", _letter())])
    with pytest.raises(PublishFailed) as refused:  # the broker is not back yet: the successor fails to start
        await publisher.publish_many([("E1", _letter())])
    assert refused.value.retriable and "starting a new producer failed" in str(refused.value)
    await publisher.publish_many([("E1", _letter())])
    assert [ident for ident, _, _ in sent] == [len(made) - 1]
