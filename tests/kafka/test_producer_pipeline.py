"""The event producer against a real broker: several produce batches in flight at once, every key's
records in Kafka in the order they were queued, `on_ack` once per record and only for what was
produced, and the event buffer's bytes all released, with the broker up and across a broker restart
(failed flights retried in order with a fresh producer). The producer is driven directly
(`serve_event_producer` on an event channel the test fills), so batches are full and many.

Rules: real clock (docs/design.md#mock-clock-real-io), waits only for conditions under deadlines.
"""

from __future__ import annotations

import collections
from functools import partial

import pytest
import structlog
import trio
import trio_asyncio

from edge.config import Settings, settings_for_tests
from edge.handoff import EventSender, open_event_channel, send_event
from edge.kafka.producer import MAX_BATCHES_IN_FLIGHT, EventProducer, serve_event_producer
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState
from edge.records import OutboundRecord
from testing.kafka.client import Record, consume_records, create_topics

pytestmark = pytest.mark.kafka

KEYS = 40
PER_KEY = 250


def settings(prefix: str, bootstrap: str, idempotence: bool, **overrides: object) -> Settings:
    return settings_for_tests(
        **{
            "edge_id": prefix,
            "kafka_bootstrap_servers": bootstrap,
            "kafka_enable_idempotence": idempotence,
            "kafka_produce_batch_size": 100,
            "kafka_request_timeout_sec": 10.0,
            **overrides,
        }
    )


def records(topic: str, acked: collections.Counter[tuple[str, int]]) -> list[OutboundRecord]:
    """KEYS x PER_KEY records, keys interleaved (every batch holds many keys, every key many batches)."""
    return [
        OutboundRecord(topic, f"peer-{k}", {"n": n, "pad": "x" * 200}, on_ack=partial(acked.update, [(f"peer-{k}", n)]))
        for n in range(PER_KEY)
        for k in range(KEYS)
    ]


def assert_in_order_per_key(consumed: list[Record]) -> None:
    """Every record is there, and for each key the first time each record landed is in the order it
    was queued (a retried record may also land a second time, later: at least once)."""
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for record in consumed:
        by_key[record.key].append(record.value["n"])
    assert len(by_key) == KEYS
    for key, ns in by_key.items():
        first_landings = list(dict.fromkeys(ns))
        assert first_landings == list(range(PER_KEY)), key


async def run_producer(
    config: Settings, nursery: trio.Nursery, first: list[OutboundRecord], capacity: int, state: KafkaState | None = None
) -> tuple[EventSender, EventProducer]:
    """A producer started on an event channel already holding `first` (so its batches are full)."""
    send, receive = open_event_channel(capacity, config.kafka_event_buffer_bytes)
    metrics = EdgeMetrics.create()
    for record in first:
        await send_event(send, record, metrics)
    state = state if state is not None else KafkaState()
    producer = await nursery.start(partial(serve_event_producer, metrics=metrics), config, receive, state)
    return send, producer


async def test_several_batches_in_flight_keep_every_key_in_order(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix
):
    """10,000 records over 40 keys, queued before the producer starts: batches of 100 go out up to
    MAX_BATCHES_IN_FLIGHT at a time; every record reaches Kafka, each key's in order, each acknowledged
    once, and the byte budget is back to 0."""
    topic = f"{kafka_topic_prefix}-events"
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    config = settings(kafka_topic_prefix, kafka_bootstrap, kafka_supports_idempotence)
    acked: collections.Counter[tuple[str, int]] = collections.Counter()
    queued = records(topic, acked)
    with structlog.testing.capture_logs() as logs, trio.fail_after(120):
        async with trio_asyncio.open_loop():
            async with trio.open_nursery() as nursery:
                send, producer = await run_producer(config, nursery, queued, len(queued))
                send.close()  # the producer returns once all is produced
    print(f"most batches in flight: {producer.stats.most_in_flight}")
    assert 1 < producer.stats.most_in_flight <= MAX_BATCHES_IN_FLIGHT
    assert producer.stats.records == len(queued) and producer.stats.retried_records == 0
    assert producer.stats.crossings == producer.stats.batches == len(queued) // 100
    assert sorted(acked) == sorted((r.key, r.value["n"]) for r in queued) and set(acked.values()) == {1}
    assert send.budget.held == 0
    consumed = await consume_records(kafka_bootstrap, topic, count=len(queued), timeout=60)
    assert len(consumed) == len(queued)
    assert_in_order_per_key(consumed)
    assert not [e for e in logs if e["event"] in ("kafka_events_unflushed", "kafka_record_rejected")]


@pytest.fixture
def restartable_broker(kafka_broker):
    if not kafka_broker.persistent:
        pytest.skip("the embedded Tansu broker loses its records on restart")
    return kafka_broker


@pytest.mark.slow
async def test_a_broker_restart_mid_flow_keeps_every_key_in_order(
    restartable_broker, kafka_supports_idempotence, kafka_topic_prefix
):
    """The broker stops while flights are out and the channel is full: flights fail, nothing new starts,
    and once the broker is back every record not acknowledged is sent again, in order, with a fresh
    producer. Every record is in Kafka, each key's first landings in order; `on_ack` was called once per
    record (never for a failed attempt) and every byte is released."""
    broker = restartable_broker
    topic = f"{kafka_topic_prefix}-events"
    await create_topics(broker.bootstrap, [topic], partitions=3)
    config = settings(kafka_topic_prefix, broker.bootstrap, kafka_supports_idempotence, kafka_request_timeout_sec=3.0)
    acked: collections.Counter[tuple[str, int]] = collections.Counter()
    queued = records(topic, acked)
    metrics = EdgeMetrics.create()
    with structlog.testing.capture_logs() as logs, trio.fail_after(240):
        async with trio_asyncio.open_loop():
            async with trio.open_nursery() as nursery:
                send, producer = await run_producer(config, nursery, queued[:2000], len(queued))
                while not acked:  # flowing
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(broker.stop)
                for record in queued[2000:4000]:
                    await send_event(send, record, metrics)
                while not any(e["event"] == "kafka_events_waiting" for e in logs):
                    await trio.sleep(0.1)
                assert len(acked) < len(queued)
                await trio.to_thread.run_sync(broker.start)
                for record in queued[4000:]:
                    await send_event(send, record, metrics)
                send.close()
    assert producer.stats.retried_records > 0
    assert producer.stats.most_in_flight > 1
    assert sorted(acked) == sorted((r.key, r.value["n"]) for r in queued) and set(acked.values()) == {1}
    assert send.budget.held == 0
    consumed = await consume_records(broker.bootstrap, topic, count=len(queued), timeout=60)
    assert_in_order_per_key(consumed)
    print(f"records in Kafka: {len(consumed)} for {len(queued)} queued; retried {producer.stats.retried_records}")
    assert not [e for e in logs if e["event"] in ("kafka_events_unflushed", "kafka_record_rejected", "asyncio_unhandled")]
