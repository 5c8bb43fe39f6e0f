"""Commands in: the Trio task that drives the command consumer through trio-asyncio.

    serve_command_consumer       one AIOKafkaConsumer in group KAFKA_GROUP_ID on the edge's command
                                 topic; reconnects with backoff whenever it fails or stalls

Each turn of the loop is one trio -> asyncio crossing (`AioConsumer.poll`) that commits what is due,
pauses or resumes fetching, and takes up to a window's worth of records. Back on the Trio side each
record gets a ticket from the offset tracker, is parsed (`CommandParser`), and goes to the router:
a command into its peer's line, anything else straight to the dead-letter topic.

Bounds and guarantees:
- Manual commits only, every KAFKA_COMMIT_INTERVAL_MS, of what the tracker says is settled (offset
  plus settled ranges in the commit metadata, see `edge.kafka.offsets`). A commit refused because the
  group is rebalancing (CommitFailedError) is logged and left to the revocation, which commits.
- At most KAFKA_MAX_PENDING_COMMANDS records read and not settled, held commands aside (they have their
  own bound, RETRY_MAX_HELD_COMMANDS). At the bound the partitions are paused, and the loop only
  commits and keeps the group membership alive until commands settle.
- Revocation (called from aiokafka's rebalance listener) commits what is settled (`CommandIntake.revoked`)
  and has the router abandon the rest, which the partition's next owner reads again. aiokafka does not call
  the listener before `stop()` (docs/design.md#aiokafka-no-revoke-on-stop): the loop commits before every stop
  itself.
- Every aiokafka call has a Trio deadline (docs/design.md#aiokafka-hangs): a poll is bounded by its own wait
  plus KAFKA_REQUEST_TIMEOUT_SEC, a start by that plus two session timeouts (joining may wait for a dead
  member's session to expire), a stop by SHUTDOWN_TIMEOUT_SEC.
- Progress watch (docs/design.md#aiokafka-silent-stall, aiokafka #1037): every `watch_interval` the loop asks
  the broker for the end offsets. A partition with records waiting whose position did not move over a whole
  interval, while fetching was not paused, means the consumer stopped receiving: it is closed and started
  again. The same check drives readiness (KafkaState.consumer_connected).

Errors: only a failed or timed-out Kafka call, a stall, or records the tracker cannot account for
(`ConsumerFailed`) end one consumer's life and start a fresh one after a backoff. Anything else (a bug
in parsing, routing or bookkeeping) is not a Kafka problem and a reconnect would not cure it: it
propagates and ends the bridge, so the edge stops with the traceback instead of looping quietly.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import structlog
import trio
import trio_asyncio
from aiokafka import TopicPartition

from edge.config import Settings
from edge.kafka.aio import AioConsumer, Poll, Progress
from edge.kafka.commands import Command, CommandParser, Source
from edge.kafka.offsets import CommitPoint, OffsetTracker, Partition, Ticket
from edge.kafka.router import CommandRouter
from edge.ops.metrics import EdgeMetrics
from edge.ops.readiness import KafkaState

log = structlog.get_logger(__name__)

#: How long one poll waits in aiokafka for records when there are none.
POLL_WAIT_MS: Final = 500
#: Most records taken in one crossing.
MAX_POLL_RECORDS: Final = 500
#: Records parsed and routed between two checkpoints.
DISPATCH_SLICE: Final = 50
#: How often the progress watch runs.
WATCH_INTERVAL_SEC: Final = 15.0
#: Reconnect backoff of the consumer.
RECONNECT_INITIAL_DELAY: Final = 0.5
RECONNECT_MAX_DELAY: Final = 5.0


class ConsumerFailed(Exception):
    """This consumer cannot go on: close it and start a fresh one (after a backoff)."""


class KafkaCallFailed(ConsumerFailed):
    """A call into aiokafka failed or passed its Trio deadline; `__cause__` is the original error."""


class ConsumerStalled(ConsumerFailed):
    """The consumer stopped receiving records that are waiting for it."""


class ConsumerOutOfStep(ConsumerFailed):
    """aiokafka handed over records the tracker cannot account for; the consumer must start again."""


def stalled_partitions(
    before: Mapping[TopicPartition, int], after: Progress
) -> list[TopicPartition]:
    """Partitions whose position did not move between two checks although records were waiting.

    `before` holds the positions of the previous check (only when fetching was not paused since).
    """
    return sorted(
        tp
        for tp, position in after.positions.items()
        if before.get(tp) == position and after.ends.get(tp, position) > position
    )


class CommandIntake:
    """The consumer's side of the bookkeeping: offsets and the window of records read, not settled.

    Built first, before the router, which settles tickets into it (`settle`). It knows nothing of the
    router: the consumer passes the router's count of held commands to `room`, and has the router
    abandon the commands of revoked partitions.
    """

    def __init__(self, tracker: OffsetTracker, max_pending: int) -> None:
        self.tracker = tracker
        self._max_pending = max_pending
        self._settled = trio.Event()

    @property
    def generation(self) -> int:
        return self.tracker.generation

    def room(self, held: int) -> int:
        """How many more records may be read now, when `held` of the unsettled ones are held commands
        (they have their own bound)."""
        return self._max_pending - (self.tracker.unsettled - held)

    def settle(self, ticket: Ticket) -> None:
        self.tracker.settle(ticket)
        self._settled.set()

    async def wait_settled(self) -> None:
        """Return at the next `settle`."""
        self._settled = trio.Event()
        await self._settled.wait()

    def revoked(self, partitions: Sequence[TopicPartition]) -> dict[Partition, CommitPoint]:
        """Forget `partitions`; return the commits to make for them."""
        return self.tracker.revoke(partitions)

    def assigned(self, partition: TopicPartition, committed: CommitPoint | None) -> None:
        self.tracker.assign(partition, committed)

    def revoke_all(self) -> list[Partition]:
        """Forget every partition (the consumer stopped); return them."""
        partitions = list(self.tracker.assigned())
        self.tracker.revoke(partitions)
        return partitions


class Rebalance:
    """What aiokafka's rebalance listener changes (`edge.kafka.aio.Assignments`): the intake's
    partitions, and the router's waiting commands of the partitions revoked.

    Its methods are called on the asyncio side, inside a Trio task of the trio-asyncio loop, so they
    are plain synchronous calls that may touch Trio objects.
    """

    def __init__(self, intake: CommandIntake, router: CommandRouter) -> None:
        self._intake = intake
        self._router = router

    @property
    def generation(self) -> int:
        return self._intake.generation

    def revoked(self, partitions: Sequence[TopicPartition]) -> dict[Partition, CommitPoint]:
        commits = self._intake.revoked(partitions)
        self._router.abandon(partitions)
        return commits

    def assigned(self, partition: TopicPartition, committed: CommitPoint | None) -> None:
        self._intake.assigned(partition, committed)

    def revoke_all(self) -> None:
        self._router.abandon(self._intake.revoke_all())


async def serve_command_consumer(
    settings: Settings,
    intake: CommandIntake,
    router: CommandRouter,
    parser: CommandParser,
    state: KafkaState,
    now: Callable[[], datetime.datetime],
    *,
    metrics: EdgeMetrics,
    watch_interval: float = WATCH_INTERVAL_SEC,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Consume commands until cancelled, reconnecting whenever the consumer fails (`ConsumerFailed`).

    `intake` is the one `router` settles into. Any other exception propagates (see the module docstring).
    """
    consumer = _Consumer(settings, intake, router, parser, state, now, metrics, watch_interval)
    task_status.started()
    delay = RECONNECT_INITIAL_DELAY
    while True:
        try:
            await consumer.run()
        except ConsumerFailed as error:  # Kafka's failures only: log, back off, start a fresh consumer
            log.warning("kafka_consumer_failed", error=_describe(error), retry_in=delay)
        else:
            delay = RECONNECT_INITIAL_DELAY
        if consumer.was_running:
            delay = RECONNECT_INITIAL_DELAY
        await trio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY)


class _Consumer:
    def __init__(
        self,
        settings: Settings,
        intake: CommandIntake,
        router: CommandRouter,
        parser: CommandParser,
        state: KafkaState,
        now: Callable[[], datetime.datetime],
        metrics: EdgeMetrics,
        watch_interval: float,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.router = router
        self.rebalance = Rebalance(intake, router)
        self.parser = parser
        self.metrics = metrics
        self.state = state
        self.now = now
        self.watch_interval = watch_interval
        self.was_running = False
        self.commit_interval = settings.kafka_commit_interval_ms / 1000
        self.request_timeout = settings.kafka_request_timeout_sec

    async def run(self) -> None:
        """One consumer's life: start, consume until it fails, commit and stop."""
        self.was_running = False
        aio = AioConsumer(self.settings, self.rebalance)
        start_timeout = self.request_timeout + 2 * self.settings.kafka_session_timeout_sec
        await _kafka(start_timeout, aio.start)
        self.was_running = True
        self.state.set_consumer(True)
        log.info(
            "kafka_consumer_started",
            topic=self.settings.commands_topic,
            group=self.settings.group_id,
        )
        try:
            await self._consume(aio)
        finally:
            self.state.set_consumer(False)
            commits = self.intake.tracker.due_commits()
            error: str | None = None
            with trio.move_on_after(self.settings.shutdown_timeout_sec, shield=True) as stopping:
                try:
                    error = await trio_asyncio.aio_as_trio(aio.stop)(commits)
                except Exception as stop_error:  # noqa: BLE001 - closing: report and go on
                    error = _describe(stop_error)
            self.rebalance.revoke_all()
            log.info(
                "kafka_consumer_stopped",
                committed=None if error else {f"{t}:{p}": point[0] for (t, p), point in commits.items()},
                commit_error=error,
                timed_out=stopping.cancelled_caught,
            )

    async def _consume(self, aio: AioConsumer) -> None:
        intake = self.intake
        next_commit = trio.current_time()
        next_watch = trio.current_time() + self.watch_interval
        positions: dict[TopicPartition, int] | None = None
        paused_since_watch = False
        poll_timeout = POLL_WAIT_MS / 1000 + self.request_timeout + 5.0
        while True:
            now = trio.current_time()
            commits: dict[Partition, CommitPoint] = {}
            if now >= next_commit:
                commits = intake.tracker.due_commits()
                next_commit = now + self.commit_interval
            room = intake.room(self.router.held)
            fetch = room > 0
            paused_since_watch = paused_since_watch or not fetch
            poll: Poll = await _kafka(
                poll_timeout, aio.poll, commits, fetch, min(room, MAX_POLL_RECORDS), POLL_WAIT_MS if fetch else 0
            )
            self._committed(commits, poll)
            await self._dispatch(poll)
            if trio.current_time() >= next_watch:
                positions = await self._watch(aio, None if paused_since_watch else positions)
                paused_since_watch = False
                next_watch = trio.current_time() + self.watch_interval
            if not fetch:
                await self._wait_for_room(min(next_commit, next_watch))

    async def _wait_for_room(self, deadline: float) -> None:
        """Until a settled command makes room in the window, or `deadline`."""
        with trio.move_on_at(deadline):
            while self.intake.room(self.router.held) <= 0:
                await self.intake.wait_settled()

    def _committed(self, asked: Mapping[Partition, CommitPoint], poll: Poll) -> None:
        if poll.committed:
            self.intake.tracker.committed({(tp[0], tp[1]): point for tp, point in poll.committed.items()})
            self.state.set_consumer(True)
        if poll.commit_error is not None:
            log.warning("kafka_commit_failed", error=poll.commit_error, partitions=len(asked))
            if not poll.commit_error.startswith("CommitFailedError"):
                self.state.set_consumer(False)

    async def _dispatch(self, poll: Poll) -> None:
        intake = self.intake
        router = self.router
        skipped = 0
        handled = 0
        for tp, records in poll.records.items():
            for record in records:
                handled += 1
                if handled % DISPATCH_SLICE == 0:
                    await trio.lowlevel.checkpoint()  # a large batch must not starve the peer sessions
                if intake.generation != poll.generation:
                    # The assignment changed since these were fetched: the partitions' next owner
                    # (perhaps us again) reads them from the last commit.
                    log.debug("kafka_records_stale", partition=f"{tp.topic}:{tp.partition}")
                    return
                if not intake.tracker.owns(tp):
                    # aiokafka returned records of a partition the rebalance listener has not handed
                    # over yet. Dropping them would lose them until the next restart: start again from
                    # the last commit instead.
                    raise ConsumerOutOfStep(f"records of {tp.topic}:{tp.partition} before its assignment")
                ticket = intake.tracker.read(tp, record.offset)
                if ticket is None:
                    skipped += 1
                    continue
                self.metrics.commands_received.inc()
                source = Source(tp.topic, tp.partition, record.offset)
                item = self.parser.parse(record.value, source, self.now())
                if isinstance(item, Command):
                    log.debug(
                        "command_received",
                        peer_id=item.peer_id,
                        request_id=item.request_id,
                        command_type=item.command_type,
                        partition=tp.partition,
                        offset=record.offset,
                    )
                    router.submit(item, ticket)
                else:
                    await router.dead_letter(item, ticket)
        if skipped:
            log.info("kafka_settled_records_skipped", count=skipped)

    async def _watch(
        self, aio: AioConsumer, before: dict[TopicPartition, int] | None
    ) -> dict[TopicPartition, int] | None:
        try:
            progress: Progress = await _kafka(self.request_timeout + 5.0, aio.progress)
        except KafkaCallFailed as error:  # Kafka away: not ready, keep going
            log.warning("kafka_consumer_unreachable", error=_describe(error))
            self.state.set_consumer(False)
            return None
        self.state.set_consumer(True)
        if before is not None:
            stalled = stalled_partitions(before, progress)
            if stalled:
                shown = {f"{tp.topic}:{tp.partition}": (progress.positions[tp], progress.ends[tp]) for tp in stalled}
                log.error("kafka_consumer_stalled", partitions=shown, interval_sec=self.watch_interval)
                raise ConsumerStalled(f"no progress on {sorted(shown)} in {self.watch_interval:g} s")
        return dict(progress.positions)


async def cross(timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
    """Call the asyncio coroutine function `fn(*args)` from Trio, under a Trio deadline (raises
    trio.TooSlowError past it)."""
    with trio.fail_after(timeout):
        return await trio_asyncio.aio_as_trio(fn)(*args)


async def _kafka(timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
    """`cross`, with whatever the Kafka call raised (its deadline too) as KafkaCallFailed."""
    try:
        return await cross(timeout, fn, *args)
    except Exception as error:  # the consumer's Kafka I/O edge: translated, the cause kept
        raise KafkaCallFailed(_describe(error)) from error


def _describe(error: Exception) -> str:
    if isinstance(error, KafkaCallFailed) and isinstance(error.__cause__, Exception):
        error = error.__cause__  # logged as the Kafka client's own error
    return f"{type(error).__name__}: {error}"[:300]
