"""The command router: valid commands -> the right peer's outbound channel, retried, in order.

    CommandRouter.serve            owns its clone of the event channel's send end (for dead letters)
      one task per peer with       the peer's line: a FIFO of its commands, in topic order
      commands waiting

What it guarantees:
- Per-peer order. A peer's commands are offered in the order they were read, and a command is
  settled only once it and every command before it was written to the peer's stream or dead-lettered.
- Pipelining. A line does not wait for one write before offering the next command: an attempt offers
  the head and the due commands behind it at once, up to GRPC_MAX_WORKERS of them (the session's
  outbound channel keeps them in order and its writer sends them together), then waits for their
  writes in order and settles those written. The first not written is where the attempt failed.
- Isolation. Each peer has its own line and task, so a peer that is away, slow or stuck delays only its
  own commands; no bound is shared between peers, so commands to many peers are written as fast as
  their sessions write. Waiting out a backoff holds nothing.
- Retries (docs/protocol.md#retries-and-backoff). A failed attempt (no live session, a full outbound channel,
  a session that ended before the write, a write not done within `write_timeout`) is retried after
  `RetryPolicy.delay(n, u)`. A command's clock starts when it is read, not when it reaches the head of
  its line: when an attempt for a peer fails, every command of that peer whose retry is due counts the
  failure too. So a burst of commands for a peer that is away is dead-lettered after one retry span,
  not one span per command, and cannot pin the consumer's window for long. After 1 + RETRY_MAX_RETRIES
  attempts a command is dead-lettered with the reason of its last failure (`peer_not_connected`, or
  `delivery_failed` for a full channel, a failed or timed-out write).
- Held commands. A command with `expires_at` is retried (the same delays, which reach the cap and stay
  there) until it is delivered or expires (`expired`). At most RETRY_MAX_HELD_COMMANDS are held at
  once; one more is dead-lettered at once as `delivery_failed`.
- A write that timed out is not offered again while its session lives: the same Delivery is awaited
  on the next attempt, so a slow peer does not get the command twice. (If it is finally written after
  the command was dead-lettered, the peer sees a command the backend was told failed: request_id
  deduplication covers it; see docs/kafka.md.)
- Settling. A delivered command's ticket is settled at once; a dead-lettered one when the broker
  acknowledged its dead letter (`OutboundRecord.on_ack`). Only settled records are committed.
- Following the peer (edge.kafka.forwarding). With no session here, presence decides: forwarded, in
  line order, to the edge holding the peer (settled on the broker's ack), or waited for without running
  out of retries if it left less than COMMAND_PEER_GRACE_SEC ago.
- Revocation. `abandon(partitions)` drops every waiting command of those partitions: their new owner
  (often this edge again) reads them from the last commit.

Time is Trio time only (MockClock drives every retry in tests); `expires_at` is turned into a Trio
deadline once, when the command is read, from the injected wall clock.
"""

from __future__ import annotations

import datetime
import random as _random
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

import attrs
import structlog
import trio

from edge.config import Settings
from edge.convert import timestamp
from edge.handoff import Delivery, EventSender, PeerDirectory, PeerSession, SessionGone, send_event
from edge.kafka.backoff import RandomSource, RetryPolicy
from edge.kafka.commands import Command, DeadLetter, Reason, dead_letter_record, undeliverable
from edge.kafka.forwarding import Decision, Forward, Wait, decide, forwarded_record, hops_of
from edge.kafka.offsets import Partition, Ticket
from edge.ops.metrics import EdgeMetrics
from edge.presence import PresenceView, epoch_ms

log = structlog.get_logger(__name__)

#: How long one attempt waits for an offered command to be written to the peer's stream.
WRITE_TIMEOUT_SEC: Final = 5.0


Failure = tuple[Reason, str]


@attrs.define(eq=False)
class _Pending:
    command: Command
    ticket: Ticket
    next_due: float
    expires: float | None
    arrived: float = 0.0  # Trio time of submit(), for the delivery latency metric
    attempts: int = 0
    held: bool = False
    abandoned: bool = False
    delivery: Delivery | None = None
    delivery_session: PeerSession | None = None


@attrs.define(eq=False)
class _Line:
    """One peer's commands, in topic order, and the event that wakes its task."""

    peer_id: str
    queue: deque[_Pending] = attrs.field(factory=deque)
    wake: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class RouterStats:
    delivered: int = 0
    dead_lettered: dict[str, int] = attrs.field(factory=dict)
    retries: int = 0
    forwarded: int = 0


class CommandRouter:
    """Routes commands to peers. Create it, `await nursery.start(router.serve)`, then `submit`."""

    def __init__(
        self,
        settings: Settings,
        sessions: PeerDirectory,
        events: EventSender,
        settle: Callable[[Ticket], None],
        now: Callable[[], datetime.datetime],
        *,
        random: RandomSource | None = None,
        write_timeout: float = WRITE_TIMEOUT_SEC,
        presence: PresenceView | None = None,
        metrics: EdgeMetrics,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._events = events
        self._settle = settle
        self._now = now
        self._random: RandomSource = random if random is not None else _random.Random().random
        self._write_timeout = write_timeout
        self._policy = RetryPolicy.from_settings(settings)
        self._depth = settings.grpc_max_workers
        self._writing = 0
        self._max_held = settings.retry_max_held_commands
        self._presence = presence
        self._started_ms = 0  # wall-clock ms when `serve` started
        self._lines: dict[str, _Line] = {}
        self._nursery: trio.Nursery | None = None
        self._held = 0
        self._waiting = 0
        self.stats = RouterStats()
        self.metrics = metrics

    @property
    def held(self) -> int:
        """Commands with `expires_at` waiting for their peer after a failed attempt."""
        return self._held

    @property
    def waiting(self) -> int:
        """Commands in the lines, held ones included."""
        return self._waiting

    @property
    def deliveries_in_progress(self) -> int:
        return self._writing

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started_ms = epoch_ms(self._now())
        async with self._events:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._nursery = None

    # --- called by the consumer -------------------------------------------------------------------

    def submit(self, command: Command, ticket: Ticket) -> None:
        """Queue a command behind the peer's earlier ones. Never waits."""
        if self._nursery is None:
            raise RuntimeError("the router is not running")
        now = trio.current_time()
        expires = None
        if command.expires_at is not None:
            expires = now + (command.expires_at - self._now()).total_seconds()
        pending = _Pending(command, ticket, next_due=now, expires=expires, arrived=now)
        line = self._lines.get(command.peer_id)
        if line is None:
            line = self._lines[command.peer_id] = _Line(command.peer_id)
            self._nursery.start_soon(self._serve_line, line, name=f"command-line-{command.peer_id}")
        line.queue.append(pending)
        self._waiting += 1
        line.wake.set()

    async def dead_letter(self, letter: DeadLetter, ticket: Ticket) -> None:
        """Produce `letter`; its ticket is settled when the broker has acknowledged it."""
        log.info(
            "command_dead_lettered",
            reason=letter.reason.value,
            detail=letter.detail,
            attempts=letter.attempts,
            peer_id=letter.peer_id,
            request_id=letter.request_id,
            topic=letter.source.topic,
            partition=letter.source.partition,
            offset=letter.source.offset,
        )
        self.stats.dead_lettered[letter.reason.value] = self.stats.dead_lettered.get(letter.reason.value, 0) + 1
        self.metrics.commands_dead_lettered.labels(reason=letter.reason.value).inc()
        record = dead_letter_record(
            letter,
            edge_id=self._settings.edge_id,
            topic=self._settings.deadletter_topic,
            now=self._now(),
            on_ack=partial(self._settle, ticket),
        )
        await send_event(self._events, record, self.metrics)  # waits while the event buffer is full

    def abandon(self, partitions: Iterable[Partition]) -> int:
        """Drop every waiting command read from `partitions` (revoked). Returns how many."""
        gone = {(topic, partition) for topic, partition in partitions}
        dropped = 0
        for line in self._lines.values():
            kept: deque[_Pending] = deque()
            for pending in line.queue:
                if pending.ticket.partition in gone:
                    pending.abandoned = True
                    self._forget(pending)
                    dropped += 1
                else:
                    kept.append(pending)
            if len(kept) != len(line.queue):
                line.queue = kept
                line.wake.set()
        if dropped:
            log.info("commands_abandoned", count=dropped, partitions=sorted(gone))
        return dropped

    # --- one peer's line ---------------------------------------------------------------------------

    async def _serve_line(self, line: _Line) -> None:
        structlog.contextvars.bind_contextvars(peer_id=line.peer_id)
        reachable = False  # the last attempt for this peer succeeded: try the next command at once
        try:
            while line.queue:
                await self._expire(line)
                if not line.queue:
                    break
                now = trio.current_time()
                if not reachable:
                    wake_at = self._next_wake(line)
                    if wake_at > now:
                        line.wake = trio.Event()
                        with trio.move_on_at(wake_at):
                            await line.wake.wait()
                        continue
                head = line.queue[0]
                decision = self._absent(line.peer_id, head)
                if isinstance(decision, Forward):
                    await self._forward(line, head, decision)
                    reachable = True  # the next command goes the same way at once, in order
                    continue
                written, failed = await self._attempt(line)
                self._delivered(line, written)
                reachable = failed is None
                if failed is not None and not failed[0].abandoned:  # (else its partition was revoked meanwhile)
                    await self._fail_due(line, failed[1], grace=isinstance(decision, Wait))
        finally:
            if self._lines.get(line.peer_id) is line:
                del self._lines[line.peer_id]

    def _delivered(self, line: _Line, written: list[_Pending]) -> None:
        """Take the commands just written off the front of their line and settle them, in order."""
        now = trio.current_time()
        for pending in written:
            pending.attempts += 1
            if pending.abandoned:
                continue  # revoked while it was being written: its partition's new owner reads it again
            if line.queue and line.queue[0] is pending:
                line.queue.popleft()
            else:
                line.queue.remove(pending)
            self._forget(pending)
            self.stats.delivered += 1
            self.metrics.command_delivered(pending.command.command_type, now - pending.arrived)
            log.debug("command_delivered", request_id=pending.command.request_id, attempts=pending.attempts)
            self._settle(pending.ticket)

    def _absent(self, peer_id: str, pending: _Pending) -> Decision:
        """What presence says to do when the peer has no session here (None: the usual rules)."""
        if self._presence is None or self._sessions.lookup(peer_id) is not None:
            return None
        if pending.delivery is not None and (not pending.delivery.settled or pending.delivery.written):
            return None  # a write to the old session is pending or done: `_attempt` settles it
        hops, settings, now_ms = hops_of(pending.command.original), self._settings, epoch_ms(self._now())
        grace_ms, holder = int(settings.command_peer_grace_sec * 1000), self._presence.get(peer_id)
        return decide(
            holder, edge_id=settings.edge_id, hops=hops, max_hops=settings.command_max_hops,
            now_ms=now_ms, grace_ms=grace_ms, started_ms=self._started_ms,
        )  # fmt: skip

    async def _forward(self, line: _Line, pending: _Pending, to: Forward) -> None:
        """Send the head command on to the edge that holds its peer; settled when acknowledged."""
        self._remove(line, pending)
        hops, edge_id, settle = hops_of(pending.command.original) or 0, self._settings.edge_id, partial(self._settle, pending.ticket)
        self.stats.forwarded += 1
        log.info("command_forwarded", request_id=pending.command.request_id, to_edge=to.edge_id, hops=hops + 1)
        topic = self._settings.commands_topic_of(to.edge_id)
        record = forwarded_record(pending.command, topic=topic, edge_id=edge_id, hops=hops, on_ack=settle)
        await send_event(self._events, record, self.metrics)

    def _next_wake(self, line: _Line) -> float:
        wake_at = min(pending.next_due for pending in line.queue)
        expiries = [pending.expires for pending in line.queue if pending.expires is not None]
        if expiries:
            wake_at = min(wake_at, min(expiries))
        return wake_at

    async def _attempt(self, line: _Line) -> tuple[list[_Pending], tuple[_Pending, Failure] | None]:
        """One try at getting the line's ready commands written: offer the head and the due commands
        behind it at once (up to GRPC_MAX_WORKERS), then wait for their writes in order. Returns the
        commands written, in line order, and the first that was not with its failure (None when all were)."""
        peer_id = line.peer_id
        session = self._sessions.lookup(peer_id)
        run: list[_Pending] = []
        failure: Failure | None = None
        offered_fresh = False
        now = trio.current_time()
        for index, pending in enumerate(line.queue):
            if index >= self._depth or (index > 0 and (pending.next_due > now or session is None)):
                break
            if pending.delivery is not None:
                if pending.delivery.settled and not pending.delivery.written:
                    pending.delivery = None  # not written (its session ended): offered again below
                elif not pending.delivery.settled and session is not pending.delivery_session:
                    pending.delivery = None  # that session is gone; its channel drops the old offer
                elif offered_fresh:
                    break  # offered before a command ahead of it: keep the order, wait for the next try
                else:
                    run.append(pending)  # written already, or pending in this session: just wait
                    continue
            if session is None:
                failure = Reason.PEER_NOT_CONNECTED, f"peer {peer_id} is not connected to this edge"
                break
            delivery = Delivery(pending.command.message)
            try:
                session.offer(delivery)
            except trio.WouldBlock:
                if not run:
                    failure = Reason.DELIVERY_FAILED, "the peer's outbound queue stayed full"
                break
            except SessionGone:
                if not run:
                    failure = Reason.PEER_NOT_CONNECTED, f"peer {peer_id} disconnected"
                break
            pending.delivery, pending.delivery_session = delivery, session
            offered_fresh = True
            run.append(pending)
        if failure is not None:
            return [], (line.queue[0], failure)
        written: list[_Pending] = []
        self._writing += len(run)
        try:
            for pending in run:
                offer = pending.delivery
                assert offer is not None
                with trio.move_on_after(self._write_timeout):
                    done = await offer.wait()
                if not offer.settled:
                    detail = f"not written to the peer's stream within {self._write_timeout:g} s"
                    return written, (pending, (Reason.DELIVERY_FAILED, detail))
                if not done:
                    pending.delivery = None
                    return written, (pending, (Reason.DELIVERY_FAILED, "the peer's session ended before the command was written"))
                written.append(pending)
            return written, None
        finally:
            self._writing -= len(run)

    async def _fail_due(self, line: _Line, failure: Failure, *, grace: bool = False) -> None:
        """Count a failed attempt for the head and every command of the line whose retry is due;
        reschedule them, or dead-letter those out of retries (none while `grace`: the peer went
        moments ago and is waited for)."""
        reason, detail = failure
        now = trio.current_time()
        letters: list[tuple[_Pending, Reason, str]] = []
        for index, pending in enumerate(list(line.queue)):
            if index > 0 and pending.next_due > now:
                continue
            pending.attempts += 1
            if pending.expires is not None:
                if not pending.held:
                    if self._held >= self._max_held:
                        letters.append(
                            (
                                pending,
                                Reason.DELIVERY_FAILED,
                                f"{detail}; not held for a retry: {self._max_held} commands are held already"
                                " (RETRY_MAX_HELD_COMMANDS)",
                            )
                        )
                        continue
                    pending.held = True
                    self._held += 1
            elif pending.attempts > self._policy.max_retries and not grace:
                letters.append((pending, reason, f"{detail} (after {pending.attempts} attempts)"))
                continue
            self.stats.retries += 1
            self.metrics.commands_retried.labels(cause=reason.value).inc()
            pending.next_due = now + self._policy.delay(pending.attempts - 1, self._random())
            log.debug(
                "command_retry_scheduled",
                request_id=pending.command.request_id,
                attempts=pending.attempts,
                retry_in=round(pending.next_due - now, 3),
                reason=reason.value,
            )
        for pending, letter_reason, letter_detail in letters:
            if pending.abandoned:
                continue  # its partition was revoked while an earlier dead letter was being queued
            self._remove(line, pending)
            await self.dead_letter(undeliverable(pending.command, letter_reason, letter_detail, pending.attempts), pending.ticket)

    async def _expire(self, line: _Line) -> None:
        now = trio.current_time()
        expired = [p for p in line.queue if p.expires is not None and p.expires <= now]
        for pending in expired:
            if pending.abandoned:
                continue
            self._remove(line, pending)
            expires_at = pending.command.expires_at
            shown = timestamp(expires_at) if expires_at is not None else "?"
            detail = f"expired at {shown} before it could be delivered ({pending.attempts} attempts)"
            await self.dead_letter(undeliverable(pending.command, Reason.EXPIRED, detail, pending.attempts), pending.ticket)

    def _remove(self, line: _Line, pending: _Pending) -> None:
        try:
            line.queue.remove(pending)
        except ValueError:
            return  # abandoned meanwhile
        self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        self._waiting -= 1
        if pending.held:
            pending.held = False
            self._held -= 1
