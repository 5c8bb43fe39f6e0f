"""The asyncio side of the bridge: thin coroutines over aiokafka, called from Trio in batches.

Everything in this module runs on the trio-asyncio loop and is entered from Trio through
`trio_asyncio.aio_as_trio`. Each entry point does a whole batch per crossing
(docs/design.md#trio-asyncio-crossing-cost), awaits every future it creates, and stops every client it starts
(docs/design.md#trio-asyncio-handler-reraises), so nothing un-awaited can reach the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, MessageSizeTooLargeError

from edge.config import Settings
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


#: Told, once every record of a batch is in the producer's accumulator, whether all of them got there
#: (False: a record failed to be handed over, it and those after it are failed).
OnEnqueued = Callable[[bool], None]


def producer_options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"giggityflix-edge-{settings.edge_id}",
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        "request_timeout_ms": int(settings.kafka_request_timeout_sec * 1000),
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "retry_backoff_ms": 200,
    }


class AioProducer:
    """One started AIOKafkaProducer. Create and use only on the asyncio side."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(**producer_options(settings))

    async def start(self) -> None:
        started = False
        try:
            await self._producer.start()
            started = True
        finally:
            if not started:
                # A failed (or cancelled) start leaves connections and tasks behind; stop cleans them up.
                await self._producer.stop()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_batch(self, records: Sequence[OutboundRecord], on_enqueued: OnEnqueued | None = None) -> BatchResult:
        """Produce `records` in order and wait for every ack.

        `on_enqueued`, if given, is called once every record has been handed to aiokafka, before the
        acks are awaited: the caller may then start the next batch, which aiokafka orders after this one.

        A record that can never be produced (it cannot be encoded, or it is over the producer's
        request size) is *rejected* and reported, so it cannot block the records behind it. Any other
        failure marks that record and every later one as *failed*: the caller sends them again.
        """
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        rejected: list[tuple[int, str]] = []
        failed: list[int] = []
        for index, record in enumerate(records):
            try:
                key, value = record.encoded  # encoded once, when it was queued (edge.handoff.send_event)
            except (TypeError, ValueError) as error:  # UnicodeEncodeError is a ValueError
                rejected.append((index, f"cannot be encoded: {error!r}"[:300]))
                continue
            try:
                future = await self._producer.send(record.topic, value, key=key)
            except MessageSizeTooLargeError as error:
                rejected.append((index, f"too large: {error}"[:300]))
                continue
            except Exception as error:  # noqa: BLE001 - reported to the Trio side as failed records
                log.warning("kafka_send_failed", topic=record.topic, error=repr(error))
                failed.extend(range(index, len(records)))
                break
            futures.append((index, future))
        if on_enqueued is not None:
            on_enqueued(not failed)
        first_error: BaseException | None = None
        for index, future in futures:
            # Awaited one by one, in order, rather than through asyncio.gather: a record's future is
            # set when its partition batch is acknowledged, so after the first await of a batch the
            # others are already done and `await` returns without suspending. gather would add a done
            # callback to every future, i.e. one more asyncio handle per record scheduled through
            # trio-asyncio's queue (the profile of the events benchmark: docs/performance.md).
            try:
                await future
            except asyncio.CancelledError as error:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this crossing is cancelled (a Trio deadline), not the record
                failed.append(index)  # the record's future was cancelled by the client
                first_error = first_error or error
            except Exception as error:  # noqa: BLE001 - reported to the Trio side as a failed record
                failed.append(index)
                first_error = first_error or error
        if first_error is not None:
            log.warning("kafka_produce_failed", records=len(failed), error=repr(first_error))
        return BatchResult(failed=sorted(failed), rejected=rejected)


@attrs.frozen
class BatchResult:
    """Indexes into a batch: records to send again, and records Kafka will never take (with why)."""

    failed: list[int]
    rejected: list[tuple[int, str]]


# --- the command consumer --------------------------------------------------------------------------


class Assignments(Protocol):
    """What the consumer's rebalance listener tells the Trio side (plain synchronous calls: asyncio
    callbacks run inside a Trio task of the trio-asyncio loop, so they may touch Trio objects)."""

    @property
    def generation(self) -> int: ...

    def revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, tuple[int, str]]:
        """Forget `partitions`; return the commits to make for them before they go."""
        ...

    def assigned(self, partition: TopicPartition, committed: tuple[int, str] | None) -> None:
        """Start on `partition`, whose last commit (offset, metadata) was `committed`."""
        ...


def consumer_options(settings: Settings) -> dict[str, Any]:
    session_ms = int(settings.kafka_session_timeout_sec * 1000)
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"giggityflix-edge-{settings.edge_id}",
        "group_id": settings.group_id,
        "enable_auto_commit": False,  # manual commits only (docs/design.md#aiokafka-auto-commit)
        "auto_offset_reset": "earliest",  # a new group starts from the beginning (docs/protocol.md#commands)
        "isolation_level": "read_committed",  # never act on a command whose transaction aborted
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 3),
        "request_timeout_ms": int(settings.kafka_request_timeout_sec * 1000),
        "retry_backoff_ms": 200,
        "fetch_max_wait_ms": 200,
    }


@attrs.frozen
class Poll:
    """What one crossing of `AioConsumer.poll` brings back."""

    records: Mapping[TopicPartition, list[ConsumerRecord]]
    #: `Assignments.generation` when the records were taken: a later one makes them stale.
    generation: int
    committed: Mapping[TopicPartition, tuple[int, str]]
    commit_error: str | None


@attrs.frozen
class Progress:
    """Fetch position and end offset of each assigned partition (for the stall watch)."""

    positions: Mapping[TopicPartition, int]
    ends: Mapping[TopicPartition, int]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped: its base is Any
    def __init__(self, owner: AioConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # aiokafka calls this before a rebalance, never before stop()
        # (docs/design.md#aiokafka-no-revoke-on-stop): AioConsumer.stop commits on its own.
        await self._owner._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._owner._assigned(list(assigned))


class AioConsumer:
    """One AIOKafkaConsumer in the command group, plus the admin client that reads commit metadata.
    Create and use only on the asyncio side."""

    def __init__(self, settings: Settings, assignments: Assignments) -> None:
        self._settings = settings
        self._topic = settings.commands_topic
        self._group = settings.group_id
        self._assignments = assignments
        self._timeout = settings.kafka_request_timeout_sec
        self._consumer = AIOKafkaConsumer(**consumer_options(settings))
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"giggityflix-edge-{settings.edge_id}-offsets",
            request_timeout_ms=int(settings.kafka_request_timeout_sec * 1000),
        )
        self._paused = False
        #: Partitions whose on_partitions_assigned is still running: not fetched from until it is done.
        self._assigning: set[TopicPartition] = set()

    async def start(self) -> None:
        """Connect, join the group and wait for the first assignment."""
        started = False
        try:
            await self._admin.start()
            self._consumer.subscribe([self._topic], listener=_Listener(self))
            await self._consumer.start()
            started = True
        finally:
            if not started:  # failed or cancelled: close what was opened
                await self._close_clients()

    async def poll(
        self, commits: Mapping[TopicPartition, tuple[int, str]], fetch: bool, max_records: int, timeout_ms: int
    ) -> Poll:
        """Commit `commits` (if any), pause or resume fetching, then take up to `max_records`."""
        committed, commit_error = await self._commit(commits)
        assignment = self._consumer.assignment()
        if fetch and self._paused:
            self._consumer.resume(*(assignment - self._assigning))
            self._paused = False
        elif not fetch:
            self._consumer.pause(*assignment)  # again: partitions may have been assigned since
            self._paused = True
        records = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max(1, max_records))
        return Poll(records, self._assignments.generation, committed, commit_error)

    async def progress(self) -> Progress:
        """Fetch positions and end offsets of the assigned partitions (one ListOffsets request)."""
        assignment = sorted(self._consumer.assignment())
        if not assignment:
            return Progress({}, {})
        ends = await self._consumer.end_offsets(assignment)
        positions = {}
        for partition in assignment:
            with contextlib.suppress(IllegalStateError):
                positions[partition] = await self._consumer.position(partition)
        return Progress(positions, ends)

    async def stop(self, commits: Mapping[TopicPartition, tuple[int, str]]) -> str | None:
        """Commit `commits`, then leave the group and close. Returns the commit error, if any."""
        try:
            _committed, error = await self._commit(commits)
        finally:
            await self._close_clients()
        return error

    async def _close_clients(self) -> None:
        for close in (self._consumer.stop, self._admin.close):
            try:
                await close()
            except Exception as error:  # noqa: BLE001 - closing: report and go on
                log.warning("kafka_client_close_failed", error=repr(error))

    async def _commit(
        self, commits: Mapping[TopicPartition, tuple[int, str]]
    ) -> tuple[Mapping[TopicPartition, tuple[int, str]], str | None]:
        assignment = self._consumer.assignment()
        offsets = {TopicPartition(*tp): point for tp, point in commits.items() if tp in assignment}
        if not offsets:
            return {}, None
        try:
            async with asyncio.timeout(self._timeout):
                await self._consumer.commit(offsets)
        except CommitFailedError as error:
            # The group is rebalancing: the partitions are being revoked, and the revocation commits.
            return {}, f"CommitFailedError: {error}"
        except (KafkaError, TimeoutError) as error:
            return {}, f"{type(error).__name__}: {error}"
        return offsets, None

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            commits = dict(self._assignments.revoked(revoked))
            committed, error = await self._commit(commits)
            log.info(
                "kafka_partitions_revoked",
                partitions=[f"{tp.topic}:{tp.partition}" for tp in revoked],
                committed={f"{tp.topic}:{tp.partition}": point[0] for tp, point in committed.items()},
                commit_error=error,
            )
        except Exception:  # the listener's boundary: aiokafka would only log it less clearly
            log.exception("kafka_revocation_failed")

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka would fetch from the new partitions while this listener awaits the commit metadata
        # below; their records must not reach the Trio side before the tracker knows the partitions.
        self._assigning = set(assigned)
        if assigned:
            self._consumer.pause(*assigned)
        try:
            await self._start_tracking(assigned)
        finally:
            self._assigning = set()
            if assigned and not self._paused:
                self._consumer.resume(*assigned)

    async def _start_tracking(self, assigned: list[TopicPartition]) -> None:
        committed: dict[TopicPartition, tuple[int, str]] = {}
        try:
            if assigned:
                async with asyncio.timeout(self._timeout):
                    found = await self._admin.list_consumer_group_offsets(self._group, partitions=assigned)
                committed = {
                    tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0
                }
        except (KafkaError, TimeoutError, OSError) as error:
            # Without the metadata, records settled before the last commit may be delivered again.
            log.warning("kafka_commit_metadata_unavailable", error=repr(error))
        try:
            for partition in assigned:
                self._assignments.assigned(partition, committed.get(partition))
        except Exception:
            log.exception("kafka_assignment_failed")
        log.info(
            "kafka_partitions_assigned",
            partitions=[f"{tp.topic}:{tp.partition}" for tp in assigned],
            committed={f"{tp.topic}:{tp.partition}": point[0] for tp, point in committed.items()},
        )
