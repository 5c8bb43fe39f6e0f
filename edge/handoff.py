"""The hand-off between the peer side (`edge.peers`) and the Kafka bridge (`edge.kafka`).

The two sides are siblings: neither imports the other, both import this module. What crosses:

    commands, Kafka -> peer     the router finds a peer through a `PeerDirectory`, offers a
                                `Delivery` to its `PeerSession`; the session settles it, written or not,
                                or refuses it at once (`trio.WouldBlock` when full, `SessionGone`)
    presence, both ways         the directory's `presence` view (edge.presence): the registry writes
                                its own sessions into it, the Kafka side the whole fleet's; the Kafka
                                side asks the directory to `displace` a session another edge took over
    events, peer -> Kafka       `OutboundRecord`s (edge.records) on the one event channel
                                (`open_event_channel`), bounded by count and by bytes, always sent
                                through `send_event`, which counts the time spent waiting for room
                                (backpressure) in `giggityflix_edge_event_backpressure_seconds`

The peer registry and sessions (edge.peers) fulfil the protocols; the command router (edge.kafka)
relies on them. The event channel's receive end belongs to the bridge's producer, which releases a
record's bytes from the budget once Kafka has acknowledged or rejected it; every task that queues a
record (a session's reader, the endings task, the handler announcing a session, the router's dead
letters) goes through `send_event`. Cancelled while it waits for room, a sender has queued nothing and
holds no bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Protocol

import attrs
import trio

from edge.ops.metrics import EdgeMetrics
from edge.presence import Holder, PresenceView
from edge.proto import pb
from edge.records import OutboundRecord

# --- commands: what a delivery and a session promise each other ------------------------------------


@attrs.define(eq=False)
class Delivery:
    """An EdgeMessage on its way to the peer. Settled exactly once: written, or not (session ended,
    message over GRPC_MAX_MESSAGE_BYTES)."""

    message: pb.EdgeMessage
    _settled: trio.Event = attrs.field(factory=trio.Event, init=False)
    written: bool = attrs.field(default=False, init=False)

    def settle(self, written: bool) -> None:
        if not self._settled.is_set():
            self.written = written
            self._settled.set()

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    async def wait(self) -> bool:
        """True once written to the peer's stream (handed to its HTTP/2 connection, within the peer's
        flow-control window), False if it never will be. Put a deadline around it."""
        await self._settled.wait()
        return self.written


class SessionGone(Exception):
    """The session ended; nothing more can be delivered through it."""


class PeerSession(Protocol):
    """What the router needs of a live session."""

    def offer(self, delivery: Delivery) -> None:
        """Queue `delivery` without waiting, to be settled once written or dropped. Raises
        trio.WouldBlock when the session's outbound channel is full, SessionGone when it has ended."""
        ...


class PeerDirectory(Protocol):
    """What the router needs of the peer registry."""

    @property
    def presence(self) -> PresenceView:
        """Which edge holds which peer, fleet-wide (kept by both sides; see edge.presence)."""
        ...

    def lookup(self, peer_id: str) -> PeerSession | None:
        """The peer's live session if it can take deliveries now, else None."""
        ...

    def displace(self, peer_id: str, newer: Holder) -> bool:
        """`newer` is a session of the peer on another edge: end the one here (reason `replaced`) if
        it is older. Returns whether one was ended."""
        ...


# --- events: the one way into the event channel ----------------------------------------------------


@attrs.define(eq=False)
class _Waiter:
    size: int
    admitted: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class EventBudget:
    """The event buffer's byte budget (KAFKA_EVENT_BUFFER_BYTES): the bytes (`OutboundRecord.size`) of
    every record queued in the event channel or on its way to Kafka, from `send_event` until the
    producer has them acknowledged or rejected (`EventReceiver.release`).

    A record is admitted when it fits (`held + size <= limit`) or when nothing is held at all, so a
    record larger than the whole budget still goes, alone, and nothing deadlocks. Senders are admitted
    in the order they came: a large record is not overtaken forever by small ones.
    """

    limit: int
    held: int = 0
    _waiters: collections.deque[_Waiter] = attrs.field(factory=collections.deque, init=False)

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def take_nowait(self, size: int) -> bool:
        """Count `size` bytes in if they fit now and nobody waits ahead; False (nothing taken) if not."""
        if self._waiters or not self._fits(size):
            return False
        self.held += size
        return True

    async def take(self, size: int) -> None:
        """Wait until `size` bytes are counted in. Cancelled while waiting: nothing taken, it raises."""
        waiter = _Waiter(size)
        self._waiters.append(waiter)
        self._admit()
        returned = False
        try:
            await waiter.admitted.wait()
            returned = True
        finally:
            if not returned:  # cancelled
                if waiter.admitted.is_set():  # admitted after the cancellation was delivered: give it back
                    self.release(size)
                else:
                    self._waiters.remove(waiter)
                    self._admit()  # the one behind may fit now that this one is gone

    def release(self, size: int) -> None:
        self.held -= size
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._fits(self._waiters[0].size):
            waiter = self._waiters.popleft()
            self.held += waiter.size
            waiter.admitted.set()


@attrs.define(eq=False)
class EventSender:
    """A send end of the event channel: a Trio memory channel bounded by count
    (KAFKA_EVENT_BUFFER_SIZE) and the `EventBudget` it shares with every clone and the receive end.
    Records go in only through `send_event`; closing is the channel's (every end closed: the receive
    end sees `trio.EndOfChannel`)."""

    channel: trio.MemorySendChannel[OutboundRecord]
    budget: EventBudget

    def clone(self) -> EventSender:
        return EventSender(self.channel.clone(), self.budget)

    def close(self) -> None:
        self.channel.close()

    async def aclose(self) -> None:
        await self.channel.aclose()

    async def __aenter__(self) -> EventSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@attrs.define(eq=False)
class EventReceiver:
    """The receive end of the event channel. What is received still counts against the byte budget
    until `release`d: the producer releases a record once Kafka acknowledged or rejected it."""

    channel: trio.MemoryReceiveChannel[OutboundRecord]
    budget: EventBudget

    async def receive(self) -> OutboundRecord:
        return await self.channel.receive()

    def receive_nowait(self) -> OutboundRecord:
        return self.channel.receive_nowait()

    def release(self, records: Iterable[OutboundRecord]) -> None:
        """These records are done with (produced or rejected): their bytes leave the budget."""
        self.budget.release(sum(record.size for record in records))

    def queued(self) -> int:
        """Records waiting in the channel (not yet received)."""
        return self.channel.statistics().current_buffer_used

    def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> EventReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> EventReceiver:
        return self

    async def __anext__(self) -> OutboundRecord:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def open_event_channel(max_records: int, max_bytes: int) -> tuple[EventSender, EventReceiver]:
    """The event channel: at most `max_records` queued (KAFKA_EVENT_BUFFER_SIZE), and at most
    `max_bytes` queued or on their way to Kafka (KAFKA_EVENT_BUFFER_BYTES; see `EventBudget`)."""
    send, receive = trio.open_memory_channel[OutboundRecord](max_records)
    budget = EventBudget(max_bytes)
    return EventSender(send, budget), EventReceiver(receive, budget)


async def send_event(events: EventSender, record: OutboundRecord, metrics: EdgeMetrics) -> None:
    """Queue `record`, waiting while the channel is full by count or by bytes, and add the time spent
    waiting for room (backpressure) to the metric.

    Same checkpoint rules as a channel's `send`: cancellation before the record is queued raises (its
    bytes, if counted, are given back), after it never.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    size = record.size  # encodes the record, once: the producer sends these bytes
    started: float | None = None
    taken = queued = False
    try:
        if not events.budget.take_nowait(size):
            started = trio.current_time()
            await events.budget.take(size)  # cancelled here: nothing counted
        taken = True
        try:
            events.channel.send_nowait(record)
        except trio.WouldBlock:
            started = trio.current_time() if started is None else started
            await events.channel.send(record)
        queued = True
    finally:
        if taken and not queued:  # counted but not queued (cancelled, or the channel closed)
            events.budget.release(size)
        if started is not None:
            metrics.event_backpressure.inc(trio.current_time() - started)
    if started is None:
        await trio.lowlevel.cancel_shielded_checkpoint()
