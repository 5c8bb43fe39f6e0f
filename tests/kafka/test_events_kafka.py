"""Events out, against a real broker: batching across the trio-asyncio boundary
(docs/design.md#trio-asyncio-crossing-cost), and the loop's exception handler
(docs/design.md#trio-asyncio-handler-reraises).

Rules: real clock for anything with a broker; waits only for conditions under deadlines.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
import structlog
import trio
import trio_asyncio

import edge
from edge.nursery import log_asyncio_exception
from edge.proto import pb
from testing.kafka.broker import free_port
from testing.kafka.client import consume_records
from testing.settings import edge_settings
from tests.kafka.support import Collector


@pytest.mark.kafka
async def test_events_cross_the_boundary_in_batches(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """10 peers publish 1,000 events each: every one reaches Kafka, in per-peer order, with far fewer
    trio -> asyncio crossings than events (one crossing costs ~40 us,
    docs/design.md#trio-asyncio-crossing-cost)."""
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    peers = [f"peer-{i}" for i in range(10)]
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(edge.serve, settings)
            port = started.grpc_port
            collectors = [await Collector.connect(nursery, p, port, tls_files.ca_pem) for p in peers]
            try:
                for n in range(1000):
                    for collector in collectors:
                        collector.peer.send(
                            pb.PeerMessage(
                                request_id=f"{collector.peer_id}/{n}",
                                file_delete_response=pb.FileDeleteResponse(catalog_uuid=f"c{n}", success=True),
                            )
                        )
                records = await consume_records(
                    kafka_bootstrap, settings.kafka_file_delete_responses_topic, count=10_000, timeout=60
                )
            finally:
                for collector in collectors:
                    collector.close()
            nursery.cancel_scope.cancel()
    assert len(records) == 10_000
    for peer in peers:
        assert [r.value["request_id"] for r in records if r.key == peer] == [f"{peer}/{n}" for n in range(1000)]
    [stopped] = [e for e in logs if e["event"] == "kafka_producer_stopped"]
    per_thousand = stopped["crossings"] * 1000 / stopped["records"]
    print(f"producer: {stopped['records']} records, {stopped['batches']} batches, {stopped['crossings']} crossings"
          f" = {per_thousand:.1f} crossings per 1,000 events")
    assert stopped["records"] >= 10_000
    assert per_thousand <= 100  # batched; one crossing per event would be 1,000


async def test_unretrieved_failed_future_does_not_tear_down_the_loop():
    """docs/design.md#trio-asyncio-handler-reraises: with the edge's handler installed, a failed asyncio
    future nobody awaits is logged and the loop goes on serving crossings (trio-asyncio's default handler
    would raise into its nursery)."""
    with structlog.testing.capture_logs() as logs:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(log_asyncio_exception)

            async def abandon_a_failed_future() -> None:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(RuntimeError("nobody awaits me"))
                del future

            await trio_asyncio.aio_as_trio(abandon_a_failed_future)()
            gc.collect()
            await trio.testing.wait_all_tasks_blocked()

            async def still_working() -> str:
                await asyncio.sleep(0)
                return "ok"

            assert await trio_asyncio.aio_as_trio(still_working)() == "ok"
    [event] = [e for e in logs if e["event"] == "asyncio_unhandled"]
    assert "nobody awaits me" in event["error"]


async def test_without_the_handler_one_failed_future_tears_the_loop_down():
    """The control for the test above: trio-asyncio's own handler turns the same stray future into an
    error of the whole loop, which is why edge.nursery installs `log_asyncio_exception`."""
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio_asyncio.open_loop():

            async def abandon_a_failed_future() -> None:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(RuntimeError("nobody awaits me"))
                del future

            await trio_asyncio.aio_as_trio(abandon_a_failed_future)()
            gc.collect()
            with trio.fail_after(10):  # ended by the loop's failure long before this deadline
                await trio.sleep_forever()
    assert caught.group_contains(RuntimeError, match="nobody awaits me")


async def test_shutdown_with_kafka_unreachable_logs_what_it_could_not_flush(tls_files):
    """No broker at all: the edge starts within the start-up check's deadline, serves a peer, is not
    ready, and on shutdown gives up flushing after SHUTDOWN_TIMEOUT_SEC, logging how many events it
    could not produce (connected, catalog, disconnected, and the presence twins of the two)."""
    settings = edge_settings(
        "unflushed", f"127.0.0.1:{free_port()}", tls_files, True, shutdown_timeout_sec=1.0, kafka_request_timeout_sec=2.0
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                started = await nursery.start(edge.serve, settings)
                port, state = started.grpc_port, started.runtime.health.kafka
            peer = await Collector.connect(nursery, "peer-u", port, tls_files.ca_pem)
            assert not state.ready
            nursery.cancel_scope.cancel()
        peer.close()
    [unflushed] = [e for e in logs if e["event"] == "kafka_events_unflushed"]
    assert unflushed["count"] == 5 and unflushed["deadline_sec"] == 1.0
    assert any(e["event"] == "kafka_unavailable_at_start" for e in logs)
