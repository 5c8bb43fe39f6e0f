"""Events out: the Trio task that drains the event channel into Kafka.

    serve_event_producer        owns the event channel's receive end and one AIOKafkaProducer

It takes what is in the channel in batches of up to KAFKA_PRODUCE_BATCH_SIZE (one trio-asyncio crossing
per batch), produces them with acks=all (idempotent where the broker allows) and waits for every ack.
A batch that fails is retried, only its failed records and in order, until it is in Kafka: nothing is
dropped while the process lives. While Kafka is slow or down the channel (KAFKA_EVENT_BUFFER_SIZE)
fills and the peer sessions' `send` waits: peers stop being read, nothing is lost.

On cancellation (shutdown) the task keeps draining, shielded, for at most SHUTDOWN_TIMEOUT_SEC, until
the channel is closed by the peer side (so every `disconnected` event of the shutdown is in it); what
cannot be produced by then is logged with its count.
"""

from __future__ import annotations

import attrs
import structlog
import trio
import trio_asyncio

from edge.config import Settings
from edge.kafka.aio import AioProducer
from edge.kafka.state import KafkaState
from edge.ops.metrics import EdgeMetrics
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)

#: Wait between attempts to reach Kafka or to re-send a failed batch (doubling up to the max).
RECONNECT_INITIAL_DELAY: float = 0.5
RECONNECT_MAX_DELAY: float = 10.0


@attrs.define
class ProducerStats:
    batches: int = 0
    records: int = 0
    crossings: int = 0
    retried_records: int = 0


@attrs.define
class EventProducer:
    """Owns one aiokafka producer and (re)connects it on demand."""

    settings: Settings
    state: KafkaState
    stats: ProducerStats = attrs.field(factory=ProducerStats)
    metrics: EdgeMetrics = attrs.field(factory=EdgeMetrics.create)
    _aio: AioProducer | None = attrs.field(default=None, init=False)
    _delay: float = attrs.field(default=RECONNECT_INITIAL_DELAY, init=False)

    async def connect(self) -> None:
        """Wait until a producer is started, retrying with capped backoff."""
        while self._aio is None:
            try:
                with trio.fail_after(self.settings.kafka_request_timeout_sec):
                    self._aio = await trio_asyncio.aio_as_trio(self._start)()
                self.state.set_producer(True)
                self._delay = RECONNECT_INITIAL_DELAY
                log.info("kafka_producer_connected", bootstrap=self.settings.kafka_bootstrap_servers)
            except (Exception, trio.TooSlowError) as error:  # noqa: BLE001 - any failure: retry later
                self.state.set_producer(False)
                log.warning("kafka_producer_unavailable", error=_describe(error), retry_in=self._delay)
                await self._backoff()

    async def _start(self) -> AioProducer:
        producer = AioProducer(self.settings)
        await producer.start()
        return producer

    async def publish(self, batch: list[OutboundRecord]) -> None:
        """Produce `batch` until every record is acknowledged."""
        pending = batch
        while pending:
            await self.connect()
            assert self._aio is not None
            self.stats.crossings += 1
            started = trio.current_time()
            try:
                with trio.fail_after(self.settings.kafka_request_timeout_sec * 2):
                    pending = await trio_asyncio.aio_as_trio(self._aio.send_batch)(pending)
            except trio.TooSlowError:
                log.warning("kafka_produce_timed_out", records=len(pending))
            if not pending:
                self.metrics.produced(batch, trio.current_time() - started)
            if pending:
                self.stats.retried_records += len(pending)
                self.metrics.events_produce_retried.inc(len(pending))
                self.state.set_producer(False)
                await self._backoff()
            else:
                self.state.set_producer(True)
                self._delay = RECONNECT_INITIAL_DELAY
        self.stats.batches += 1
        self.stats.records += len(batch)

    async def close(self) -> None:
        if self._aio is None:
            return
        aio, self._aio = self._aio, None
        self.state.set_producer(False)
        with trio.move_on_after(self.settings.kafka_request_timeout_sec, shield=True) as scope:
            try:
                await trio_asyncio.aio_as_trio(aio.stop)()
            except Exception as error:  # noqa: BLE001 - closing: report and go on
                log.warning("kafka_producer_stop_failed", error=_describe(error))
        if scope.cancelled_caught:
            log.warning("kafka_producer_stop_timed_out")

    async def _backoff(self) -> None:
        await trio.sleep(self._delay)
        self._delay = min(self._delay * 2, RECONNECT_MAX_DELAY)


async def next_batch(
    events: trio.MemoryReceiveChannel[OutboundRecord], limit: int
) -> list[OutboundRecord]:
    """Wait for one record, then take whatever else is already queued, up to `limit`.

    Raises trio.EndOfChannel once the channel is closed and empty.
    """
    batch = [await events.receive()]
    while len(batch) < limit:
        try:
            batch.append(events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


async def serve_event_producer(
    settings: Settings,
    events: trio.MemoryReceiveChannel[OutboundRecord],
    state: KafkaState,
    *,
    metrics: EdgeMetrics | None = None,
    task_status: trio.TaskStatus[EventProducer] = trio.TASK_STATUS_IGNORED,
) -> None:
    producer = EventProducer(settings, state, metrics=metrics if metrics is not None else EdgeMetrics.create())
    in_flight: list[OutboundRecord] = []
    async with events:
        task_status.started(producer)
        try:
            await producer.connect()  # at once, not at the first event: readiness depends on it
            while True:
                in_flight = await next_batch(events, settings.kafka_produce_batch_size)
                await producer.publish(in_flight)
                in_flight = []
        except trio.EndOfChannel:
            pass
        finally:
            with trio.move_on_after(settings.shutdown_timeout_sec, shield=True) as drain:
                await _drain(producer, events, in_flight, settings.kafka_produce_batch_size)
            if drain.cancelled_caught:
                left = len(in_flight) + events.statistics().current_buffer_used
                log.error("kafka_events_unflushed", count=left, deadline_sec=settings.shutdown_timeout_sec)
            await producer.close()
            log.info(
                "kafka_producer_stopped",
                records=producer.stats.records,
                batches=producer.stats.batches,
                crossings=producer.stats.crossings,
            )


async def _drain(
    producer: EventProducer,
    events: trio.MemoryReceiveChannel[OutboundRecord],
    in_flight: list[OutboundRecord],
    limit: int,
) -> None:
    """Produce the interrupted batch, then everything queued until the channel closes."""
    if in_flight:
        await producer.publish(in_flight)
        in_flight.clear()
    while True:
        try:
            batch = await next_batch(events, limit)
        except trio.EndOfChannel:
            return
        in_flight.extend(batch)
        await producer.publish(in_flight)
        in_flight.clear()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]
