"""`python -m bench.raw_kafka MODE LOOP BOOTSTRAP TOPIC`: the raw limit of the Kafka side.

aiokafka alone, with the edge's own producer options (`edge.kafka.aio.producer_options`), under plain
asyncio or under trio-asyncio (`LOOP` = asyncio | trio), in the most direct way each allows:
- produce: N pre-encoded records as fast as possible (send futures, gathered per batch of 500; under
  trio-asyncio one crossing per batch, as the edge does), then a paced run whose send -> ack latency
  is the floor of any "event in Kafka" latency;
- consume: the same N records read back from the earliest offset (getmany; under trio-asyncio one
  crossing per getmany), then a paced producer in the same process and the append -> receive latency
  of the consumer reading along (the topic has LogAppendTime).
Prints one JSON line: rate, CPU seconds per record, latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import trio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import stats
from edge.config import Settings
from edge.kafka.aio import producer_options

BATCH = 500
KEYS = 1000
#: An event as the edge publishes it (a file_hash_response record), about 330 bytes.
VALUE = json.dumps(
    {
        "peer_id": "peer-000000", "edge_id": "edge-1", "timestamp": "2026-01-01T00:00:00.000000Z",
        "request_id": "e1-1-1795754357706816516", "catalog_uuid": "6f1c2a1e-8d1b-4a53-9a55-000000000001",
        "hashes": {"sha256": "ab" * 32, "md5": "cd" * 16}, "error_message": "",
    },
    separators=(",", ":"),
).encode()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_options(Settings(kafka_bootstrap_servers=bootstrap)))


async def _send_batch(producer: AIOKafkaProducer, topic: str, start: int, count: int) -> None:
    futures = [await producer.send(topic, VALUE, key=b"peer-%06d" % ((start + i) % KEYS)) for i in range(count)]
    await asyncio.gather(*futures)


async def _wait_all(futures: list[asyncio.Future]) -> None:
    await asyncio.gather(*futures)


async def _paced(run: Runner, producer: AIOKafkaProducer, topic: str, rate: float, seconds: float, sink: list[float]) -> list[asyncio.Future]:
    """Send `rate` records per second for `seconds`, a group every millisecond; their futures."""
    futures: list[asyncio.Future] = []
    began = time.monotonic()
    for tick in range(int(seconds * 1000)):
        await run.sleep_until(began + tick / 1000)
        due = int((tick + 1) * rate / 1000) - int(tick * rate / 1000)
        if due:
            futures += await run(_send_stamped, producer, topic, due, sink)
    return futures


async def _send_stamped(producer: AIOKafkaProducer, topic: str, count: int, sink: list[float]) -> list[asyncio.Future]:
    futures = []
    for _ in range(count):
        sent = time.time_ns()
        future = await producer.send(topic, VALUE, key=b"peer-000001")
        future.add_done_callback(lambda _f, sent=sent: sink.append((time.time_ns() - sent) / 1e6))
        futures.append(future)
    return futures


class Runner:
    """Runs the asyncio-side coroutines either directly (asyncio) or one crossing each (trio)."""

    def __init__(self, loop: str) -> None:
        self.loop = loop

    async def __call__(self, fn, *args, **kwargs):
        if self.loop == "trio":
            import trio_asyncio

            return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
        return await fn(*args, **kwargs)

    async def both(self, first, second) -> None:
        """Run two coroutine functions of this loop's kind concurrently."""
        if self.loop == "trio":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                nursery.start_soon(second)
        else:
            await asyncio.gather(first(), second())

    async def sleep_until(self, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            if self.loop == "trio":
                await trio.sleep(delay)
            else:
                await asyncio.sleep(delay)


async def produce(run: Runner, bootstrap: str, topic: str, records: int, rate: float, seconds: float) -> dict[str, Any]:
    producer = _producer(bootstrap)
    await run(producer.start)
    try:
        await run(_send_batch, producer, topic, 0, BATCH)  # warm-up: metadata, connections
        cpu, began = time.process_time(), time.monotonic()
        for start in range(0, records, BATCH):
            await run(_send_batch, producer, topic, start, min(BATCH, records - start))
        elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
        latencies: list[float] = []
        await run(_wait_all, await _paced(run, producer, topic, rate, seconds, latencies))
    finally:
        await run(producer.stop)
    return {"rate": records / elapsed, "cpu_per_record": cpu / records, "latency_ms": stats.summarize(latencies)}


async def consume(run: Runner, bootstrap: str, topic: str, records: int, rate: float, seconds: float) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = _producer(bootstrap)
    await run(consumer.start)
    await run(producer.start)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await run(producer.partitions_for, topic))]
        consumer.assign(partitions)
        await run(consumer.seek_to_beginning, *partitions)
        got, cpu, began = 0, time.process_time(), time.monotonic()
        while got < records and time.monotonic() < began + 120:
            batches = await run(consumer.getmany, timeout_ms=200, max_records=BATCH)
            got += sum(len(messages) for messages in batches.values())
        elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
        await run(consumer.seek_to_end, *partitions)
        latencies: list[float] = []
        expected = int(rate * seconds)

        async def send() -> None:
            await run(_wait_all, await _paced(run, producer, topic, rate, seconds, []))

        async def receive() -> None:  # append time (LogAppendTime) -> received here
            deadline = time.monotonic() + seconds + 10
            while len(latencies) < expected and time.monotonic() < deadline:
                batches = await run(consumer.getmany, timeout_ms=100, max_records=BATCH)
                now = time.time_ns() / 1e6
                latencies.extend(now - m.timestamp for messages in batches.values() for m in messages)

        await run.both(send, receive)
    finally:
        await run(producer.stop)
        await run(consumer.stop)
    return {"rate": got / elapsed, "records": got, "cpu_per_record": cpu / max(got, 1), "latency_ms": stats.summarize(latencies)}


async def trio_main(mode: str, *args: Any) -> dict[str, Any]:
    # Imported here only: importing trio_asyncio installs its own asyncio event loop policy, and the
    # asyncio runs must be plain asyncio.
    import trio_asyncio

    async with trio_asyncio.open_loop():
        return await MODES[mode](Runner("trio"), *args)


MODES = {"produce": produce, "consume": consume}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("loop", choices=("asyncio", "trio"))
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000, help="records/s of the paced latency run")
    parser.add_argument("--seconds", type=float, default=3, help="length of the paced latency run")
    a = parser.parse_args()
    args = (a.bootstrap, a.topic, a.records, a.rate, a.seconds)
    if a.loop == "trio":
        result = trio.run(trio_main, a.mode, *args)
    else:
        result = asyncio.run(MODES[a.mode](Runner("asyncio"), *args))
    print(json.dumps({"mode": a.mode, "loop": a.loop, **result}))
