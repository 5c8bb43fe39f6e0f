"""Kafka going away and coming back, against the real broker (`kafka_broker` stops and starts it).

Rules: real clock (docs/design.md#mock-clock-real-io), waits only for conditions under deadlines; the broker
is running again after each test (the fixture restarts it if a test fails half-way).
"""

from __future__ import annotations

import pytest
import structlog
import trio

import edge
from edge.ops.readiness import KafkaState
from edge.proto import pb
from testing.kafka.client import consume_records
from testing.settings import edge_settings
from tests.kafka.support import Collector

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def restartable_broker(kafka_broker):
    # Skipping here, not in the async test: a skip raised under Trio loses its reason.
    if not kafka_broker.persistent:
        pytest.skip("the embedded Tansu broker loses its records on restart")
    return kafka_broker


async def wait_ready(state: KafkaState, ready: bool, timeout: float) -> None:
    with trio.fail_after(timeout):
        while state.ready != ready:
            await state.changed.wait()


async def test_kafka_down_at_start(restartable_broker, kafka_supports_idempotence, kafka_topic_prefix, tls_files):
    """With the broker stopped the edge starts at once, serves peers and is not ready; when the broker
    comes it creates its topics, publishes what it buffered and becomes ready."""
    broker = restartable_broker
    settings = edge_settings(
        kafka_topic_prefix, broker.bootstrap, tls_files, kafka_supports_idempotence, kafka_request_timeout_sec=3.0
    )
    await trio.to_thread.run_sync(broker.stop)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):  # no waiting for Kafka
            started = await nursery.start(edge.serve, settings)
            port, state = started.grpc_port, started.runtime.health.kafka
        peer = await Collector.connect(nursery, "peer-early", port, tls_files.ca_pem)
        try:
            assert not state.ready and not state.producer_connected and not state.consumer_connected
            await trio.to_thread.run_sync(broker.start)
            await wait_ready(state, True, timeout=60)
            records = await consume_records(broker.bootstrap, settings.kafka_peer_lifecycle_events_topic, count=1)
            assert [(r.key, r.value["event_type"]) for r in records] == [("peer-early", "connected")]
        finally:
            peer.close()
        nursery.cancel_scope.cancel()


async def test_broker_restart_while_peers_publish_10000_events(
    restartable_broker, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """10 grpcio peers publish 1,000 responses each while the broker is stopped and started again: the
    event buffer fills (backpressure: sessions stop reading their peers), nothing is dropped, and after
    recovery every event is in Kafka, by count and by id."""
    broker = restartable_broker
    buffer_size = 1000
    settings = edge_settings(
        kafka_topic_prefix,
        broker.bootstrap,
        tls_files,
        kafka_supports_idempotence,
        kafka_request_timeout_sec=3.0,
        kafka_event_buffer_size=buffer_size,
    )
    peers = [f"peer-{i}" for i in range(10)]
    expected = {f"{p}/{n}" for p in peers for n in range(1000)}
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(edge.serve, settings)
            port, state = started.grpc_port, started.runtime.health.kafka
            await wait_ready(state, True, timeout=60)
            collectors = [await Collector.connect(nursery, p, port, tls_files.ca_pem) for p in peers]
            try:
                await trio.to_thread.run_sync(broker.stop)
                for n in range(1000):
                    for collector in collectors:
                        collector.peer.send(
                            pb.PeerMessage(
                                request_id=f"{collector.peer_id}/{n}",
                                file_hash_response=pb.FileHashResponse(catalog_uuid=f"c{n}", hashes={"sha256": "ab"}),
                            )
                        )
                with trio.fail_after(60):  # the buffer fills while Kafka is away
                    while not any(e["event"] == "kafka_events_waiting" and e["buffered"] == buffer_size for e in logs):
                        await trio.sleep(0.1)
                await trio.to_thread.run_sync(broker.start)
                records = await consume_records(
                    broker.bootstrap, settings.kafka_file_hash_responses_topic, count=len(expected), timeout=120
                )
                ids = [r.value["request_id"] for r in records]
                assert set(ids) == expected
                print(f"events in Kafka: {len(ids)} for {len(expected)} sent ({len(ids) - len(set(ids))} duplicates)")
            finally:
                for collector in collectors:
                    collector.close()
            nursery.cancel_scope.cancel()
    assert not [e for e in logs if e["event"] in ("kafka_events_unflushed", "kafka_record_rejected", "asyncio_unhandled")]
