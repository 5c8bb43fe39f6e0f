"""Presence in: the compacted presence topic -> the presence view, and cross-edge takeovers.

    serve_presence          one AIOKafkaConsumer with no group: every partition of the presence
                            topic assigned, read from the beginning; reconnects with backoff

Every edge reads the whole topic (KAFKA_PEER_PRESENCE_TOPIC, compacted, keyed by peer id, holding the
same JSON as the lifecycle topic: edge.peers.protocol.presence_record). No consumer group, so no
commits, no rebalances, and no edge waits for another: each consumer just follows the log.

Start-up: the end offsets are taken once the partitions are assigned, and the edge reports the view
caught up (`KafkaState.presence_caught_up`, part of readiness) when its position has reached them on
every partition. Until then epochs could be numbered from a partial view; the edge is not ready, so
a load balancer sends peers elsewhere. A reconnect reads the topic from the beginning again (applying
a record twice changes nothing: `PresenceView.apply` keeps only newer sessions).

Takeover: a record naming a newer session of a peer on another edge, while this edge holds an older
one, has the directory end it (`displace`, reason `replaced`, ABORTED). The delay is Kafka's: the
other edge's producer (a 5 ms linger) plus this consumer's fetch, which returns as soon as a record is
there (docs/scaling.md#takeover for the figure).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import structlog
import trio
import trio_asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from edge.config import Settings
from edge.handoff import PeerDirectory
from edge.kafka.aio import Progress
from edge.kafka.consumer import WATCH_INTERVAL_SEC, stalled_partitions
from edge.ops.readiness import KafkaState
from edge.presence import presence_entry

log = structlog.get_logger(__name__)

#: How long one poll waits in aiokafka when there is nothing new.
POLL_WAIT_MS: Final = 500
#: Most records taken in one crossing.
MAX_POLL_RECORDS: Final = 5000
#: Reconnect backoff.
RECONNECT_INITIAL_DELAY: Final = 0.5
RECONNECT_MAX_DELAY: Final = 5.0


@attrs.frozen
class PresenceBatch:
    """What one crossing brings back: the records, and the fetch position of each partition."""

    records: list[ConsumerRecord]
    positions: Mapping[TopicPartition, int]


class AioPresenceReader:
    """The asyncio side: one group-less consumer of the presence topic. Create and use only there."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka_peer_presence_topic
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"giggityflix-edge-{settings.edge_id}-presence",
            request_timeout_ms=int(settings.kafka_request_timeout_sec * 1000),
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"giggityflix-edge-{settings.edge_id}-presence",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(settings.kafka_request_timeout_sec * 1000),
            retry_backoff_ms=200,
            fetch_max_wait_ms=100,
        )

    async def start(self) -> dict[TopicPartition, int]:
        """Connect, assign every partition from the beginning; return the end offsets to catch up to."""
        started = False
        try:
            await self._admin.start()
            try:
                [described] = await self._admin.describe_topics([self._topic])
            finally:
                await self._admin.close()
            numbers = {partition["partition"] for partition in described.get("partitions", ())}
            if not numbers:
                raise KafkaError(f"presence topic {self._topic} has no partitions (does it exist?)")
            await self._consumer.start()
            partitions = [TopicPartition(self._topic, number) for number in sorted(numbers)]
            self._consumer.assign(partitions)
            await self._consumer.seek_to_beginning(*partitions)
            ends = await self._consumer.end_offsets(partitions)
            started = True
            return dict(ends)
        finally:
            if not started:
                await self.stop()

    async def poll(self) -> PresenceBatch:
        found = await self._consumer.getmany(timeout_ms=POLL_WAIT_MS, max_records=MAX_POLL_RECORDS)
        records = [record for batch in found.values() for record in batch]
        positions = {tp: await self._consumer.position(tp) for tp in self._consumer.assignment()}
        return PresenceBatch(records, positions)

    async def progress(self) -> Progress:
        """Fetch positions and end offsets (one ListOffsets request), for the stall watch."""
        assignment = sorted(self._consumer.assignment())
        ends = await self._consumer.end_offsets(assignment)
        return Progress({tp: await self._consumer.position(tp) for tp in assignment}, ends)

    async def stop(self) -> None:
        """Close the consumer. aiokafka's close cancels a fetch that is in its retry backoff (the broker
        away) and awaits it, which raises that fetch's CancelledError here: not ours to propagate
        unless this crossing itself is cancelled."""
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("kafka_client_close_failed", client="presence", error="a fetch was cancelled while closing")
        except Exception as error:  # noqa: BLE001 - closing: report and go on
            log.warning("kafka_client_close_failed", client="presence", error=repr(error))


def caught_up(positions: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]) -> bool:
    """Pure: every partition's position has reached the end offset taken at start."""
    return all(positions.get(tp, -1) >= end for tp, end in ends.items())


def apply_records(records: Sequence[ConsumerRecord], directory: PeerDirectory, edge_id: str) -> int:
    """Apply `records` to the directory's presence view in order, and have the directory end the
    sessions another edge took over (logged `peer_taken_over`). No I/O. Returns how many ended."""
    displaced = 0
    for record in records:
        value = _decode(record.value)
        entry = None if value is None else presence_entry(value, record.timestamp)
        if entry is None:
            continue  # a tombstone, or a record this edge cannot read: presence ignores it
        peer_id, holder = entry
        if directory.presence.apply(peer_id, holder) and holder.connected and holder.edge_id != edge_id:
            if directory.displace(peer_id, holder):
                displaced += 1
                log.info("peer_taken_over", peer_id=peer_id, by_edge=holder.edge_id, epoch=holder.epoch)
    return displaced


def _decode(value: bytes | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


class PresenceReadFailed(Exception):
    """A call into aiokafka failed or passed its Trio deadline; `__cause__` is the original error."""


async def _kafka(timeout: float, fn: Callable[[], Awaitable[Any]]) -> Any:
    """`fn()` on the asyncio side under a Trio deadline; whatever it raises (an Exception: the broker
    away, a timeout, a client error) as PresenceReadFailed. Bugs elsewhere in the reader still end it."""
    try:
        with trio.fail_after(timeout):
            return await trio_asyncio.aio_as_trio(fn)()
    except Exception as error:  # the reader's Kafka I/O edge: translated, the cause kept
        raise PresenceReadFailed(f"{type(error).__name__}: {error}"[:300]) from error


async def serve_presence(
    settings: Settings,
    directory: PeerDirectory,
    state: KafkaState,
    topics_ready: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `directory.presence` up to date from the presence topic until cancelled."""
    state.presence_enabled = True
    task_status.started()
    await topics_ready.wait()
    delay = RECONNECT_INITIAL_DELAY
    timeout = settings.kafka_request_timeout_sec
    while True:
        reader = AioPresenceReader(settings)
        try:
            ends = await _kafka(timeout, reader.start)
            log.info("presence_reading", partitions=len(ends), records_to_catch_up=sum(ends.values()))
            watched, before = trio.current_time(), dict[TopicPartition, int]()
            while True:
                batch = await _kafka(timeout + POLL_WAIT_MS / 1000, reader.poll)
                if trio.current_time() - watched >= WATCH_INTERVAL_SEC:
                    # docs/design.md#aiokafka-silent-stall: records waiting and no progress: start again.
                    progress = await _kafka(timeout, reader.progress)
                    if stalled := stalled_partitions(before, progress):
                        raise PresenceReadFailed(f"no progress on {[str(tp) for tp in stalled]}")
                    watched, before = trio.current_time(), dict(progress.positions)
                apply_records(batch.records, directory, settings.edge_id)
                delay = RECONNECT_INITIAL_DELAY
                if not state.presence_caught_up and caught_up(batch.positions, ends):
                    state.set_presence_caught_up()
                    log.info("presence_caught_up", peers=len(directory.presence))
        except PresenceReadFailed as error:
            log.warning("presence_reader_failed", error=str(error), retry_in=delay)
        finally:
            with trio.move_on_after(settings.shutdown_timeout_sec, shield=True):
                await trio_asyncio.aio_as_trio(reader.stop)()
        await trio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY)
