"""Sessions' last records, from the handler that ended them to the event channel, in order.

When a session ends, its handler hands over an `Ending`: the records its reader had taken from the
peer but not yet queued, then its `disconnected` event. `serve_endings`, one task per edge owned by
`serve_peers`, queues them on the event channel in the order sessions ended, waiting while the channel
is full (Kafka slow) for as long as it takes, as a session's reader does. Only then is the session
released from the registry and its `ended` set: until then a new registration of the same peer id
waits for it, as for a takeover, so a peer's `disconnected` is always queued before its next
`connected`.

Why a task of its own: a handler must return soon after its stream is gone (the transport cancels it
SHUTDOWN_TIMEOUT_SEC after a reset), while Kafka may stay away much longer; a `disconnected` event must
not be lost for that. Pending endings are bounded: one per session that was announced, and new
sessions cannot be announced while the channel is full.

At shutdown the task keeps queuing, shielded, for at most SHUTDOWN_TIMEOUT_SEC, until every handler
has handed over (the handover channel is closed once the gRPC server has returned); what is left then
is logged (`peer_events_lost`) with its count.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import structlog
import trio

from edge.handoff import EventSender, send_event
from edge.ops.metrics import EdgeMetrics
from edge.peers.session import Session
from edge.records import OutboundRecord

log = structlog.get_logger(__name__)


@attrs.define(eq=False)
class Ending:
    """One ended session's last records, in order; `records` shrinks as they are queued.
    `finished()` is called once, when they are all queued or given up: it releases the session
    (registry) and sets its `ended`."""

    session: Session
    records: list[OutboundRecord]
    finished: Callable[[], None]

    async def publish(self, events: EventSender, metrics: EdgeMetrics) -> None:
        while self.records:
            await send_event(events, self.records[0], metrics)
            del self.records[0]
        self.finished()

    def lost(self) -> None:
        """Give up (shutdown deadline passed, or the bridge is gone): say what is lost."""
        if self.records:
            log.error(
                "peer_events_lost",
                peer_id=self.session.info.peer_id,
                session_id=self.session.info.session_id,
                count=len(self.records),
                last=dict(self.records[-1].value),
            )
            self.records.clear()
        self.finished()


async def serve_endings(
    endings: trio.MemoryReceiveChannel[Ending],
    events: EventSender,
    shutdown_timeout: float,
    *,
    metrics: EdgeMetrics,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Queue handed-over endings on `events` until `endings` is closed (see the module docstring)."""
    current: Ending | None = None
    async with endings:
        task_status.started()
        try:
            async for current in endings:
                await current.publish(events, metrics)
            current = None
        finally:
            with trio.move_on_after(shutdown_timeout, shield=True):
                try:
                    if current is not None:
                        await current.publish(events, metrics)
                    async for current in endings:
                        await current.publish(events, metrics)
                    current = None
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the bridge is gone: only possible if it crashed
            _give_up(current, endings)


def _give_up(current: Ending | None, endings: trio.MemoryReceiveChannel[Ending]) -> None:
    if current is not None:
        current.lost()
    while True:
        try:
            endings.receive_nowait().lost()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
