"""The hand-off between the peer side (`edge.peers`) and the Kafka bridge (`edge.kafka`).

The two sides are siblings: neither imports the other, both import this module. What crosses:

    commands, Kafka -> peer     the router finds a peer through a `PeerDirectory`, offers a
                                `Delivery` to its `PeerSession`; the session settles it, written or not,
                                or refuses it at once (`trio.WouldBlock` when full, `SessionGone`)
    presence, both ways         the directory's `presence` view (edge.presence): the registry writes
                                its own sessions into it, the Kafka side the whole fleet's; the Kafka
                                side asks the directory to `displace` a session another edge took over
    events, peer -> Kafka       `OutboundRecord`s (edge.records) on the one bounded event channel,
                                always sent through `send_event`, which counts the time spent waiting
                                for room (backpressure) in `giggityflix_edge_event_backpressure_seconds`

The peer registry and sessions (edge.peers) fulfil the protocols; the command router (edge.kafka)
relies on them. The event channel's receive end belongs to the bridge's producer; every task that
queues a record (a session's reader, the endings task, the handler announcing a session, the router's
dead letters) goes through `send_event`.
"""

from __future__ import annotations

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


async def send_event(
    channel: trio.MemorySendChannel[OutboundRecord], record: OutboundRecord, metrics: EdgeMetrics
) -> None:
    """`channel.send(record)`, adding the time spent waiting for room (backpressure) to the metric.

    Same checkpoint rules as `send`: cancellation before the record is queued raises, after it never.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        channel.send_nowait(record)
    except trio.WouldBlock:
        started = trio.current_time()
        try:
            await channel.send(record)
        finally:
            metrics.event_backpressure.inc(trio.current_time() - started)
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
