"""Events out: the Trio task that drains the event channel into Kafka.

    serve_event_producer        owns the event channel's receive end and one AIOKafkaProducer

It takes what is in the channel in batches of up to KAFKA_PRODUCE_BATCH_SIZE (one trio-asyncio crossing
per batch, docs/design.md#trio-asyncio-crossing-cost) and produces them with acks=all (idempotent where the
broker allows). Up to MAX_BATCHES_IN_FLIGHT batches are outstanding at once, each in a task of its own
(a *flight*): the next batch is handed to aiokafka while the acks of the earlier ones are on their way,
so the producer never idles for a round trip between batches. A record's `on_ack` (dead letters use it
to commit their command) is called only once the broker has acknowledged it, as each flight completes;
then its bytes leave the event buffer's byte budget (edge.handoff.EventBudget).

Per-key order. A flight starts only once the one before has handed every record to aiokafka
(`send_batch` reports it through `on_enqueued`), so aiokafka's accumulator receives records in channel
order, and aiokafka keeps that order within a partition (one request per broker at a time, a partition
muted while its batch is in flight). When a flight fails (some records not acknowledged) no new flight
starts: the producer waits for every flight still out, then sends all the records not acknowledged,
from every flight, in their original order, before taking anything new from the channel. After a
failure the aiokafka producer is closed and a fresh one started: an idempotent producer whose batches
expired keeps sequence numbers the broker will refuse, and a client stuck on a dead broker
(docs/design.md#aiokafka-hangs) is dropped with it. With idempotence (the default) the broker refuses a
partition batch written behind one that was lost, so a later record of a key never lands before an
earlier one that failed; without it, as with a single batch in flight, a partition batch that aiokafka
gives up on after its request timeout could be overtaken by the next one.

Nothing is dropped while the process lives: failed records are retried, in order, until they are in
Kafka. While Kafka is slow or down the channel (KAFKA_EVENT_BUFFER_SIZE records, KAFKA_EVENT_BUFFER_BYTES
bytes queued or in flight) fills and the peer sessions' `send_event` waits: peers stop being read. The
one exception is a record Kafka can never take (over the producer's request size, or not encodable): it
is logged in full as `kafka_record_rejected` and skipped, so it cannot block every record behind it.

On cancellation (shutdown) the task keeps producing, shielded, for at most SHUTDOWN_TIMEOUT_SEC from
the cancellation, until the channel is closed by the peer side (so every `disconnected` event of the
shutdown is in it) and every flight has landed; what cannot be produced by then is logged with its count.
"""

from __future__ import annotations

from typing import Final

import attrs
import structlog
import trio
import trio_asyncio

from edge.config import Settings
from edge.handoff import EventReceiver
from edge.kafka.aio import AioProducer, BatchResult, OnEnqueued
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)

#: Wait between attempts to reach Kafka or to re-send a failed batch (doubling up to the max).
RECONNECT_INITIAL_DELAY: float = 0.5
RECONNECT_MAX_DELAY: float = 5.0
#: Longest text of a rejected record's value written to the log.
REJECTED_LOG_CHARS: int = 2000
#: Produce batches outstanding at once. aiokafka sends one request per broker at a time; what the
#: flights buy is the next records already in its accumulator when a response comes back. Four batches
#: of KAFKA_PRODUCE_BATCH_SIZE cover a round trip at well over the edge's event rate; more would only
#: hold more records (their bytes count in KAFKA_EVENT_BUFFER_BYTES either way).
MAX_BATCHES_IN_FLIGHT: Final = 4


@attrs.define
class ProducerStats:
    batches: int = 0
    records: int = 0
    #: trio -> asyncio crossings made to produce (one per batch when Kafka is healthy).
    crossings: int = 0
    retried_records: int = 0
    rejected_records: int = 0
    #: The most flights outstanding at once (at most MAX_BATCHES_IN_FLIGHT).
    most_in_flight: int = 0


@attrs.define(eq=False)
class _Flight:
    """One batch handed to aiokafka in its own crossing."""

    records: list[OutboundRecord]
    #: Set once every record is in aiokafka's accumulator (or the crossing ended).
    enqueued: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False
    #: The records not acknowledged, in order, once done.
    failed: list[OutboundRecord] = attrs.field(factory=list)


@attrs.define
class EventProducer:
    """Owns one aiokafka producer, (re)connects it on demand, and keeps the flights."""

    settings: Settings
    state: KafkaState
    #: The event channel's receive end: records are taken from it, and released once settled.
    events: EventReceiver
    #: Set once the topics are known to exist: no producer is started before (see edge.kafka.topics).
    gate: trio.Event | None = None
    metrics: EdgeMetrics = attrs.field(kw_only=True)
    stats: ProducerStats = attrs.field(factory=ProducerStats)
    _aio: AioProducer | None = attrs.field(default=None, init=False)
    _delay: float = attrs.field(default=RECONNECT_INITIAL_DELAY, init=False)
    #: Flights in the order they started: those out, and those that failed, until the recovery.
    _flights: list[_Flight] = attrs.field(factory=list, init=False)
    #: A batch taken from the channel and not started (a failure came first): it goes after the retry.
    _taken: list[OutboundRecord] = attrs.field(factory=list, init=False)
    _failing: bool = attrs.field(default=False, init=False)
    _landed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _receiving: trio.CancelScope | None = attrs.field(default=None, init=False)

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

    def unsettled(self) -> int:
        """Records taken from the channel and neither acknowledged nor rejected yet."""
        return len(self._taken) + sum(len(f.failed if f.done else f.records) for f in self._flights)

    async def run(self) -> None:
        """Produce everything from the channel until it is closed and every record is settled."""
        async with trio.open_nursery() as nursery:
            while True:
                await self.connect()
                if self._failing:
                    await self._recover()
                    continue
                while self._out() >= MAX_BATCHES_IN_FLIGHT and not self._failing:
                    await self._landed.wait()
                if self._failing:
                    continue
                try:
                    batch = await self._receive()
                except trio.EndOfChannel:
                    break
                if batch is None:  # a flight failed while waiting for records
                    continue
                if self._failing:  # ... just as this batch was taken: it goes after the retry
                    self._taken = batch
                    continue
                flight = _Flight(batch)
                self._flights.append(flight)
                self.stats.most_in_flight = max(self.stats.most_in_flight, self._out())
                assert self._aio is not None
                nursery.start_soon(self._fly, self._aio, flight)
                await flight.enqueued.wait()  # the next batch goes into aiokafka after this one
        await self._recover()  # the flights have all landed: what failed among the last ones

    def _out(self) -> int:
        return sum(not flight.done for flight in self._flights)

    async def _receive(self) -> list[OutboundRecord] | None:
        """The next batch, or None if a flight failed first (nothing is taken then)."""
        with trio.CancelScope() as self._receiving:
            return await next_batch(self.events, self.settings.kafka_produce_batch_size)
        return None  # cancelled by `_fly` before a record came

    async def _fly(self, aio: AioProducer, flight: _Flight) -> None:
        flight.failed = flight.records  # until the crossing says otherwise
        try:
            flight.failed = await self._cross(aio, flight.records, flight)
        finally:
            flight.enqueued.set()
            flight.done = True
            if flight.failed:
                self._fail()
            else:
                self._flights.remove(flight)
                self.stats.batches += 1
                self.stats.records += len(flight.records)
            self._landed.set()
            self._landed = trio.Event()

    def _fail(self) -> None:
        self._failing = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def _recover(self) -> None:
        """Wait until no flight is out, then send every record not acknowledged, in order."""
        while self._out():
            await self._landed.wait()
        retry = [record for flight in self._flights for record in flight.failed] + self._taken
        size = sum(len(flight.records) for flight in self._flights) + len(self._taken)
        failed = sum(len(flight.failed) for flight in self._flights)
        self._flights.clear()
        self._taken = []
        self._failing = False
        if failed:
            await self._retry_later(failed)
        if retry:
            await self.publish(retry)
            self.stats.batches += 1
            self.stats.records += size

    async def publish(self, pending: list[OutboundRecord]) -> None:
        """Produce `pending` in one crossing at a time until every record is acknowledged (or rejected
        for good). `pending` is narrowed in place to the records not yet acknowledged."""
        while pending:
            await self.connect()
            assert self._aio is not None
            pending[:] = await self._cross(self._aio, pending, None)
            if pending:
                await self._retry_later(len(pending))

    async def _cross(
        self, aio: AioProducer, records: list[OutboundRecord], flight: _Flight | None
    ) -> list[OutboundRecord]:
        """One crossing: produce `records`, settle what Kafka acknowledged or rejected (on_ack, bytes
        released, metrics) and return the records to send again, in order."""
        self.stats.crossings += 1
        started = trio.current_time()
        on_enqueued = None if flight is None else self._on_enqueued(flight)
        try:
            with trio.fail_after(self.settings.kafka_request_timeout_sec * 2):
                result = await trio_asyncio.aio_as_trio(aio.send_batch)(records, on_enqueued)
        except trio.TooSlowError:
            log.warning("kafka_produce_timed_out", records=len(records))
            result = BatchResult(failed=list(range(len(records))), rejected=[])
        settled = set(result.failed)
        rejected = []
        for index, why in result.rejected:
            settled.add(index)
            rejected.append(records[index])
            self._reject(records[index], why)
        acknowledged = [record for index, record in enumerate(records) if index not in settled]
        for record in acknowledged:
            _acknowledge(record)
        self.events.release(acknowledged)
        self.events.release(rejected)
        self.metrics.produced(acknowledged, trio.current_time() - started)
        if not result.failed and not self._failing:
            self.state.set_producer(True)
            self._delay = RECONNECT_INITIAL_DELAY
        return [records[index] for index in result.failed]

    def _on_enqueued(self, flight: _Flight) -> OnEnqueued:
        def enqueued(complete: bool) -> None:
            # Called on the asyncio side, inside the trio-asyncio loop (Trio objects may be touched).
            if not complete:
                self._fail()  # a record could not even be handed over: nothing more goes in after it
            flight.enqueued.set()

        return enqueued

    async def _retry_later(self, count: int) -> None:
        self.stats.retried_records += count
        self.metrics.events_produce_retried.inc(count)
        self.state.set_producer(False)
        log.warning(
            "kafka_events_waiting",
            retrying=count,
            buffered=self.events.queued(),
            buffer_size=self.settings.kafka_event_buffer_size,
            buffered_bytes=self.events.budget.held,
            retry_in=self._delay,
        )
        await self.close()  # a fresh producer for the retry (see the module docstring)
        await self._backoff()

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


async def next_batch(events: EventReceiver, limit: int) -> list[OutboundRecord]:
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
    events: EventReceiver,
    state: KafkaState,
    gate: trio.Event | None = None,
    *,
    metrics: EdgeMetrics,
    task_status: trio.TaskStatus[EventProducer] = trio.TASK_STATUS_IGNORED,
) -> None:
    producer = EventProducer(settings, state, events, gate=gate, metrics=metrics)
    # Shielded: cancellation (shutdown) does not stop the producer, it gives it SHUTDOWN_TIMEOUT_SEC
    # (`_deadline_on_cancel`) to produce what the peer side queues until it closes the channel.
    produce = trio.CancelScope(shield=True)
    async with events:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_deadline_on_cancel, produce, settings.shutdown_timeout_sec)
                task_status.started(producer)
                with produce:
                    await producer.connect()  # at once, not at the first event: readiness depends on it
                    await producer.run()
                if produce.cancelled_caught:
                    left = producer.unsettled() + events.queued()
                    log.error("kafka_events_unflushed", count=left, deadline_sec=settings.shutdown_timeout_sec)
                nursery.cancel_scope.cancel()
        finally:
            await producer.close()
            log.info(
                "kafka_producer_stopped",
                records=producer.stats.records,
                batches=producer.stats.batches,
                crossings=producer.stats.crossings,
                most_in_flight=producer.stats.most_in_flight,
            )


async def _deadline_on_cancel(scope: trio.CancelScope, timeout: float) -> None:
    """Sleeps until the producer's task is cancelled, then gives `scope` its deadline."""
    try:
        await trio.sleep_forever()
    finally:
        scope.deadline = min(scope.deadline, trio.current_time() + timeout)


def _acknowledge(record: OutboundRecord) -> None:
    if record.on_ack is None:
        return
    try:
        record.on_ack()
    except Exception:  # a bug in a callback must not stop the producer
        log.exception("kafka_ack_callback_failed", topic=record.topic, key=record.key)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]
