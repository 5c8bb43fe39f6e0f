"""Events out: the Trio task that drains the event channel into Kafka.

    serve_event_producer        owns the event channel's receive end and one AIOKafkaProducer

It takes what is in the channel in batches of up to KAFKA_PRODUCE_BATCH_SIZE (one trio-asyncio crossing
per batch, docs/design.md#trio-asyncio-crossing-cost), produces them with acks=all (idempotent where the
broker allows) and waits for every ack; a record's `on_ack` (dead letters use it to commit their command) is
called only then. A batch that fails is retried, only its failed records and in order, until it is in Kafka:
nothing is dropped while the process lives. After a failure the aiokafka producer is closed and a fresh one
started: an idempotent producer whose batches expired keeps sequence numbers the broker will refuse,
and a client stuck on a dead broker (docs/design.md#aiokafka-hangs) is dropped with it. While Kafka is slow or
down the channel (KAFKA_EVENT_BUFFER_SIZE) fills and the peer sessions' `send` waits: peers stop being read,
nothing is lost. The one exception is a record Kafka can never take (over the producer's request size,
or not encodable): it is logged in full as `kafka_record_rejected` and skipped, so it cannot block
every record behind it.

On cancellation (shutdown) the task keeps draining, shielded, for at most SHUTDOWN_TIMEOUT_SEC, until
the channel is closed by the peer side (so every `disconnected` event of the shutdown is in it); what
cannot be produced by then is logged with its count.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import structlog
import trio
import trio_asyncio

from edge.config import Settings
from edge.kafka.aio import AioProducer, BatchResult
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)

#: Wait between attempts to reach Kafka or to re-send a failed batch (doubling up to the max).
RECONNECT_INITIAL_DELAY: float = 0.5
RECONNECT_MAX_DELAY: float = 5.0
#: Longest text of a rejected record's value written to the log.
REJECTED_LOG_CHARS: int = 2000


@attrs.define
class ProducerStats:
    batches: int = 0
    records: int = 0
    #: trio -> asyncio crossings made to produce (one per batch when Kafka is healthy).
    crossings: int = 0
    retried_records: int = 0
    rejected_records: int = 0


@attrs.define
class EventProducer:
    """Owns one aiokafka producer and (re)connects it on demand."""

    settings: Settings
    state: KafkaState
    #: How many events wait in the channel (for logs while Kafka is away).
    backlog: Callable[[], int] = lambda: 0
    #: Set once the topics are known to exist: no producer is started before (see edge.kafka.topics).
    gate: trio.Event | None = None
    metrics: EdgeMetrics = attrs.field(kw_only=True)
    stats: ProducerStats = attrs.field(factory=ProducerStats)
    _aio: AioProducer | None = attrs.field(default=None, init=False)
    _delay: float = attrs.field(default=RECONNECT_INITIAL_DELAY, init=False)

    async def connect(self) -> None:
        """Wait until a producer is started, retrying with capped backoff."""
        if self.gate is not None:
            await self.gate.wait()
        while self._aio is None:
            try:
                with trio.fail_after(self.settings.kafka_request_timeout_sec):
                    self._aio = await trio_asyncio.aio_as_trio(self._start)()
                self.state.set_producer(True)
                self._delay = RECONNECT_INITIAL_DELAY
                log.info("kafka_producer_connected", bootstrap=self.settings.kafka_bootstrap_servers)
            except Exception as error:  # noqa: BLE001 - any failure, a timeout too: retry later
                self.state.set_producer(False)
                log.warning("kafka_producer_unavailable", error=_describe(error), retry_in=self._delay)
                await self._backoff()

    async def _start(self) -> AioProducer:
        producer = AioProducer(self.settings)
        await producer.start()
        return producer

    async def publish(self, batch: list[OutboundRecord]) -> None:
        """Produce `batch` until every record is acknowledged (or rejected for good).

        `batch` is narrowed in place to the records not yet acknowledged, so a caller interrupted by
        cancellation knows exactly what is left to flush.
        """
        size = len(batch)
        pending = batch
        while pending:
            await self.connect()
            assert self._aio is not None
            self.stats.crossings += 1
            started = trio.current_time()
            try:
                with trio.fail_after(self.settings.kafka_request_timeout_sec * 2):
                    result = await trio_asyncio.aio_as_trio(self._aio.send_batch)(pending)
            except trio.TooSlowError:
                log.warning("kafka_produce_timed_out", records=len(pending))
                result = BatchResult(failed=list(range(len(pending))), rejected=[])
            settled = set(result.failed)
            for index, why in result.rejected:
                settled.add(index)
                self._reject(pending[index], why)
            for index, record in enumerate(pending):
                if index not in settled:
                    _acknowledge(record)
            self.metrics.produced([r for i, r in enumerate(pending) if i not in settled], trio.current_time() - started)
            pending[:] = [pending[index] for index in result.failed]
            if pending:
                self.stats.retried_records += len(pending)
                self.metrics.events_produce_retried.inc(len(pending))
                self.state.set_producer(False)
                log.warning(
                    "kafka_events_waiting",
                    retrying=len(pending),
                    buffered=self.backlog(),
                    buffer_size=self.settings.kafka_event_buffer_size,
                    retry_in=self._delay,
                )
                await self.close()  # a fresh producer for the retry (see the module docstring)
                await self._backoff()
            else:
                self.state.set_producer(True)
                self._delay = RECONNECT_INITIAL_DELAY
        self.stats.batches += 1
        self.stats.records += size

    def _reject(self, record: OutboundRecord, why: str) -> None:
        self.stats.rejected_records += 1
        try:
            shown = record.encode_value().decode("utf-8", errors="replace")
        except (TypeError, ValueError):
            shown = repr(record.value)
        log.error(
            "kafka_record_rejected",
            topic=record.topic,
            key=record.key,
            reason=why,
            value=shown[:REJECTED_LOG_CHARS],
            value_chars=len(shown),
        )

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
    gate: trio.Event | None = None,
    *,
    metrics: EdgeMetrics,
    task_status: trio.TaskStatus[EventProducer] = trio.TASK_STATUS_IGNORED,
) -> None:
    producer = EventProducer(
        settings,
        state,
        backlog=lambda: events.statistics().current_buffer_used,
        gate=gate,
        metrics=metrics,
    )
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


def _acknowledge(record: OutboundRecord) -> None:
    if record.on_ack is None:
        return
    try:
        record.on_ack()
    except Exception:  # a bug in a callback must not stop the producer
        log.exception("kafka_ack_callback_failed", topic=record.topic, key=record.key)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]
