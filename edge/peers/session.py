"""One registered peer: its cancel scope, its outbound channel, and the three tasks that serve it.

A `Session` is created by the stream handler once the peer has registered. `serve(stream)` runs, inside
the session's own cancel scope, a reader (peer -> event channel), a writer (outbound channel -> peer)
and a heartbeat ticker. Whatever ends the session calls `end(reason)`, which records the first reason
and cancels the scope; `serve` then returns the gRPC status for that reason. An exception that is a bug
ends only this session, with reason `error`.

The outbound channel is the session's own and bounded (PEER_OUTBOUND_QUEUE_SIZE). The command router
offers `Delivery` values with `offer()`, which never waits: a full channel or an ended session is an
immediate answer the router retries by its backoff rules, so a peer that stops reading cannot grow the
edge's memory. The writer marks each delivery written or dropped; whatever is still queued when the
session ends is marked dropped by `close_outbound()`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import attrs
import structlog
import trio

from edge.config import Settings
from edge.grpc import (
    MessageTooLarge,
    ProtocolViolation,
    ServerStream,
    Status,
    StatusCode,
    StreamError,
)
from edge.ops.metrics import EdgeMetrics, send_event
from edge.peers import protocol
from edge.peers.protocol import PeerProtocolError, SessionInfo
from edge.proto import pb
from edge.records import DisconnectReason, OutboundRecord

log = structlog.get_logger(__name__)


@attrs.define(eq=False)
class Delivery:
    """An EdgeMessage on its way to the peer. The session's writer settles it exactly once."""

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
        """True once written to the peer's stream, False if the session ended first."""
        await self._settled.wait()
        return self.written


class SessionGone(Exception):
    """The session ended; nothing more can be delivered through it."""


@attrs.define(eq=False)
class Session:
    info: SessionInfo
    settings: Settings
    events: trio.MemorySendChannel[OutboundRecord]
    now: Callable[[], datetime.datetime]
    metrics: EdgeMetrics = attrs.field(factory=EdgeMetrics.create, kw_only=True)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    ended: trio.Event = attrs.field(factory=trio.Event, init=False)
    announced: bool = attrs.field(default=False, init=False)
    end_reason: DisconnectReason | None = attrs.field(default=None, init=False)
    _status: Status = attrs.field(factory=lambda: Status(StatusCode.OK), init=False)
    _outbound_send: trio.MemorySendChannel[Delivery] = attrs.field(init=False)
    _outbound_receive: trio.MemoryReceiveChannel[Delivery] = attrs.field(init=False)
    _in_flight: Delivery | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._outbound_send, self._outbound_receive = trio.open_memory_channel[Delivery](
            self.settings.peer_outbound_queue_size
        )

    # --- used by the router and the registry -------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.announced and self.end_reason is None

    def offer(self, delivery: Delivery) -> None:
        """Queue a delivery without waiting. Raises trio.WouldBlock when the channel is full and
        SessionGone when the session has ended."""
        if self.end_reason is not None:
            raise SessionGone(self.info.peer_id)
        try:
            self._outbound_send.send_nowait(delivery)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise SessionGone(self.info.peer_id) from None

    def end(
        self, reason: DisconnectReason, code: StatusCode | None = None, message: str = ""
    ) -> None:
        """End the session for `reason` (the first reason given wins) and cancel its scope."""
        if self.end_reason is None:
            self.end_reason = reason
            status_code = code if code is not None else protocol.END_STATUS[reason]
            self._status = Status(status_code or StatusCode.OK, message or _default_message(reason))
        self.scope.cancel()

    # --- the session's own tasks --------------------------------------------------------------------

    async def serve(self, stream: ServerStream) -> Status:
        """Run until something ends the session; return the status to close the stream with."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, stream)
                    nursery.start_soon(self._heartbeat_loop)
                    await self._read_loop(stream)
        except* Exception:  # the one boundary for bugs in this session's tasks
            log.exception("peer_session_failed")
            self.end(DisconnectReason.ERROR, StatusCode.INTERNAL, "internal error")
        return self._status

    def close_outbound(self) -> int:
        """Close the outbound channel and mark whatever is still queued as dropped."""
        self._outbound_send.close()
        dropped = 0
        if self._in_flight is not None and not self._in_flight.settled:
            self._in_flight.settle(False)
            dropped += 1
        while True:
            try:
                delivery = self._outbound_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            delivery.settle(False)
            dropped += 1
        self._outbound_receive.close()
        return dropped

    async def _read_loop(self, stream: ServerStream) -> None:
        timeout = self.settings.peer_timeout_sec
        while True:
            with trio.move_on_after(timeout) as idle:
                try:
                    data = await stream.receive_message()
                except (MessageTooLarge, ProtocolViolation) as error:
                    log.info("peer_protocol_error", detail=str(error))
                    self.end(DisconnectReason.PROTOCOL_ERROR, error.status_code, error.client_message())
                    return
                except StreamError:
                    self.end(DisconnectReason.STREAM_CLOSED)
                    return
            if idle.cancelled_caught:
                self.end(DisconnectReason.TIMEOUT, message=f"no message from the peer in {timeout} s")
                return
            if data is None:  # the peer half-closed its side
                self.end(DisconnectReason.STREAM_CLOSED, StatusCode.OK, "stream closed by peer")
                return
            try:
                message = protocol.decode_peer_message(data)
                self.metrics.message_received(message.WhichOneof("payload"))
                record = protocol.record_for_message(message, self.info, self.settings, self.now())
            except PeerProtocolError as error:
                log.info("peer_protocol_error", detail=error.message)
                self.end(DisconnectReason.PROTOCOL_ERROR, error.code, error.message)
                return
            if record is not None:
                await send_event(self.events, record, self.metrics)  # waits while the bridge is full: backpressure
            elif message.WhichOneof("payload") is None:
                log.info("peer_message_kind_unknown", request_id=message.request_id)

    async def _write_loop(self, stream: ServerStream) -> None:
        async for delivery in self._outbound_receive:
            self._in_flight = delivery  # settled by close_outbound() if we are cancelled mid-write
            try:
                await stream.send_message(delivery.message.SerializeToString())
            except MessageTooLarge:
                log.warning("edge_message_too_large", request_id=delivery.message.request_id)
                delivery.settle(False)
                continue
            except StreamError:
                delivery.settle(False)
                self.end(DisconnectReason.STREAM_CLOSED)
                return
            delivery.settle(True)
            self._in_flight = None
            self.metrics.message_sent(delivery.message.WhichOneof("payload"))

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_sec
        while True:
            await trio.sleep(interval)
            try:
                self.offer(Delivery(protocol.heartbeat(self.now())))
            except trio.WouldBlock:
                # The peer is not reading; its own silence will time it out. Skip this beat.
                log.debug("heartbeat_skipped_queue_full")


def _default_message(reason: DisconnectReason) -> str:
    return {
        DisconnectReason.STREAM_CLOSED: "stream closed",
        DisconnectReason.TIMEOUT: "peer timed out",
        DisconnectReason.REPLACED: "replaced by a newer stream for the same peer id",
        DisconnectReason.SHUTDOWN: "edge shutting down",
        DisconnectReason.PROTOCOL_ERROR: "protocol error",
        DisconnectReason.ERROR: "internal error",
    }[reason]
