"""The orchestrator's Kafka: topics with broker timestamps, reading them back, producing commands.

Every topic the bench reads is created here before the edge starts, with
`message.timestamp.type=LogAppendTime`: each record then carries the broker's wall-clock time of
the moment it was appended to the log (ms), which is what "in Kafka" means in the figures. The load
generators stamp their own wall-clock send times (ns) into request ids; both clocks are this
machine's CLOCK_REALTIME, so the difference is a latency (to within the 1 ms of Kafka's timestamp).

All of it runs on the orchestrator's trio-asyncio loop, one crossing per call, never during a
measured window (records are read back afterwards: their timestamps were fixed on append).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

Offsets = dict[int, int]


class Record(NamedTuple):
    key: str | None
    value: bytes
    append_ms: int


class BenchKafka:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def create_topics(self, names: Sequence[str], partitions: int = 3) -> None:
        await trio_asyncio.aio_as_trio(self._create_topics)(list(names), partitions)

    async def _create_topics(self, names: list[str], partitions: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            config = {"message.timestamp.type": "LogAppendTime"}
            await admin.create_topics([NewTopic(n, partitions, 1, topic_configs=config) for n in names])
        finally:
            await admin.close()

    async def end_offsets(self, topic: str) -> Offsets:
        return await trio_asyncio.aio_as_trio(self._end_offsets)(topic)

    async def _end_offsets(self, topic: str) -> Offsets:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            await consumer.start()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - a fresh topic
                partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(partitions)
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await _stop(consumer)

    async def wait_count(self, topic: str, start: Offsets, count: int, timeout: float) -> Offsets:
        """Wait until `count` records were appended after `start` (or `timeout` s); the end offsets."""
        # The deadline is checked between calls, never by cancelling one: a Kafka client cancelled in
        # its start() is left unclosed, and trio-asyncio raises that into the run's nursery.
        deadline = trio.current_time() + timeout
        while True:
            end = await self.end_offsets(topic)
            if _count(start, end) >= count or trio.current_time() >= deadline:
                return end
            await trio.sleep(0.25)

    async def read(self, topic: str, start: Offsets, end: Offsets) -> list[Record]:
        """Every record between `start` and `end` offsets (all partitions)."""
        return await trio_asyncio.aio_as_trio(self._read)(topic, start, end)

    async def _read(self, topic: str, start: Offsets, end: Offsets) -> list[Record]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_bytes=64 * 2**20,
            max_partition_fetch_bytes=16 * 2**20,
        )
        records: list[Record] = []
        try:
            await consumer.start()
            wanted = {TopicPartition(topic, p): o for p, o in end.items() if o > start.get(p, 0)}
            if not wanted:
                return records
            consumer.assign(list(wanted))
            for tp in wanted:
                consumer.seek(tp, start.get(tp.partition, 0))
            async with asyncio.timeout(300):
                while wanted:
                    batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
                    for tp, messages in batches.items():
                        for m in messages:
                            if m.offset < wanted.get(tp, -1):
                                records.append(Record(m.key.decode() if m.key else None, m.value, m.timestamp))
                        if tp in wanted and await consumer.position(tp) >= wanted[tp]:
                            del wanted[tp]
                            consumer.pause(tp)
        finally:
            await _stop(consumer)
        return records

    async def produce(self, topic: str, items: Sequence[tuple[str, bytes]], rate: float) -> dict[str, Any]:
        """Produce (key, value) items with acks=all; paced at `rate` per second (0: as fast as possible)."""
        return await trio_asyncio.aio_as_trio(self._produce)(topic, list(items), rate)

    async def _produce(self, topic: str, items: list[tuple[str, bytes]], rate: float) -> dict[str, Any]:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
        await producer.start()
        futures = []
        try:
            began = time.monotonic()
            for index, (key, value) in enumerate(items):
                if rate > 0 and index % 10 == 0:  # pace in groups of 10 (sleep granularity)
                    delay = began + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                futures.append(await producer.send(topic, value, key=key.encode()))
            sent = time.monotonic()
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return {"count": len(items), "seconds": sent - began}


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. aiokafka's stop() can raise the CancelledError of its own internal task (its
    committed-offsets routine) although nobody cancelled us: that one is swallowed, ours is not."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def _count(start: Offsets, end: Offsets) -> int:
    return sum(offset - start.get(partition, 0) for partition, offset in end.items())
