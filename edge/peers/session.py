"""One registered peer: its cancel scope, its outbound channel, its two tasks and its two timers.

A `Session` is created by the registry once the peer has registered; its writer sends the
registration response (`greeting`) before anything from its outbound channel. `serve(stream,
registration)` runs, inside the session's own cancel scope, two tasks:

* the reader (the nursery body): publishes the full catalog, then reads the peer's messages and puts
  what they mean into the event channel; it waits while the channel is full (backpressure);
* the writer: outbound channel -> peer stream, what is queued taken together into one write;

and schedules two timers on the edge's `Timers` (edge/timers.py, one task per edge), cancelled when
the session's tasks are done:

* the heartbeat: offers an EdgeMessage heartbeat every HEARTBEAT_INTERVAL_SEC from the session's start
  (skipped when the outbound channel is full);
* the silence check: the reader stamps the time it starts waiting for each message (any message counts
  as liveness; the time it spends waiting on a full event channel does not count as the peer's
  silence). The timer fires PEER_TIMEOUT_SEC after a stamp; if the reader has stamped since, it
  re-arms for that stamp + PEER_TIMEOUT_SEC, else the session ends with reason `timeout`. So no cancel
  scope and no heap operation per message, and the ending is still at exactly the deadline.

The transport calls back the moment the stream is reset or its connection lost
(`ServerStream.on_terminated`), which ends the session even while the reader is held up by
backpressure; no task waits for it.

Whatever ends the session calls `end(reason)`, which records the first reason and cancels the scope;
`serve` then returns the gRPC status for that reason. A scope cancelled without a reason counts as
`shutdown`. An exception that is a bug ends only this session, with reason `error`, logged with its
traceback; the peer sees INTERNAL "internal error".

A record the reader had taken from the peer but not yet queued when the session was cancelled is kept
(`take_unpublished`): the handler's cleanup hands it, before the `disconnected` event, to
`serve_endings`, so a message the edge read is never lost because the session ended while Kafka was
slow.

The outbound channel is the session's own and bounded (PEER_OUTBOUND_QUEUE_SIZE). The command router
offers `Delivery` values with `offer()`, which never waits: a full channel or an ended session is an
immediate answer the router retries by its backoff rules, so a peer that stops reading holds at most
PEER_OUTBOUND_QUEUE_SIZE messages (plus the one being written) and cannot grow the edge's memory. The
writer settles each delivery written or not; whatever is still queued when the session ends is settled
"not written" by `close_outbound()`.
"""

from __future__ import annotations

import datetime
from functools import partial
from collections.abc import Callable, Iterable

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
from edge.handoff import Delivery, EventSender, SessionGone, send_event
from edge.ops.metrics import EdgeMetrics
from edge.peers import protocol
from edge.peers.protocol import PeerProtocolError, Registration, SessionInfo
from edge.proto import pb
from edge.records import DisconnectReason, OutboundRecord
from edge.timers import Timer, Timers

log = structlog.get_logger(__name__)

#: The most queued messages (and about the most bytes) the writer hands its stream in one go: they go
#: out in as few DATA frames and TLS writes as the peer's window allows.
WRITE_BATCH_MESSAGES = 64
WRITE_BATCH_BYTES = 256 * 1024


@attrs.define(eq=False)
class Session:
    info: SessionInfo
    settings: Settings
    events: EventSender
    now: Callable[[], datetime.datetime]
    #: The edge's timers (served by `serve_timers`): this session's heartbeat and silence check.
    timers: Timers
    #: Written before anything from the outbound channel (the registration response).
    greeting: pb.EdgeMessage | None = None
    metrics: EdgeMetrics = attrs.field(kw_only=True)
    #: The session's own cancel scope; prefer `end(reason)`, which says why.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    #: Set once its last records and `disconnected` are queued (or given up at shutdown) and it has
    #: left the registry (`PeerRegistry.finish`).
    ended: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: True once `connected` is in the event channel.
    announced: bool = attrs.field(default=False, init=False)
    end_reason: DisconnectReason | None = attrs.field(default=None, init=False)
    _status: Status = attrs.field(factory=lambda: Status(StatusCode.OK), init=False)
    _outbound_send: trio.MemorySendChannel[Delivery] = attrs.field(init=False)
    _outbound_receive: trio.MemoryReceiveChannel[Delivery] = attrs.field(init=False)
    #: What the writer is sending (settled by close_outbound() if it is cancelled mid-write).
    _in_flight: list[tuple[Delivery, bytes]] = attrs.field(factory=list, init=False)
    _unpublished: list[OutboundRecord] = attrs.field(factory=list, init=False)
    #: Trio time the reader started waiting for the peer's next message; None while it is not waiting.
    _listening_since: float | None = attrs.field(default=None, init=False)
    _heartbeat: Timer | None = attrs.field(default=None, init=False)
    _silence: Timer | None = attrs.field(default=None, init=False)
    _context: dict[str, object] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._outbound_send, self._outbound_receive = trio.open_memory_channel[Delivery](
            self.settings.peer_outbound_queue_size
        )

    # --- used by the router, the registry and the handler -------------------------------------------

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

    def end(self, reason: DisconnectReason, code: StatusCode | None = None, message: str = "") -> None:
        """End the session for `reason` (the first reason given wins) and cancel its scope."""
        if self.end_reason is None:
            self.end_reason = reason
            status_code = code if code is not None else protocol.END_STATUS[reason]
            self._status = Status(status_code or StatusCode.OK, message or _default_message(reason))
        self.scope.cancel()

    # --- the session's own tasks --------------------------------------------------------------------

    async def serve(self, stream: ServerStream, registration: Registration) -> Status:
        """Publish the registration's full catalog, then serve the peer until something ends the
        session; return the status to close the stream with. Cancelled from outside (shutdown), it
        raises Cancelled as usual."""
        self._context = {
            "peer_id": self.info.peer_id,
            "session_id": self.info.session_id,
            **structlog.contextvars.get_contextvars(),
        }
        stream.on_terminated(self._stream_gone)
        self._heartbeat = self.timers.schedule(trio.current_time() + self.settings.heartbeat_interval_sec, self._beat)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, stream)
                    catalog = protocol.full_catalog_records(registration, self.info, self.settings, self.now())
                    await self._publish(catalog)
                    await self._read_loop(stream)
        except* Exception:  # the one boundary for bugs in this session's tasks
            log.exception("peer_session_failed")
            self.end(DisconnectReason.ERROR, StatusCode.INTERNAL, "internal error")
        finally:
            self._stop_timers()
        if self.end_reason is None:  # the scope was cancelled directly, without a reason
            self.end(DisconnectReason.SHUTDOWN)
        return self._status

    def take_unpublished(self) -> list[OutboundRecord]:
        """Records read from the peer whose queuing was interrupted by the session's end."""
        records, self._unpublished = self._unpublished, []
        return records

    def close_outbound(self) -> int:
        """Close the outbound channel and settle whatever is still queued as not written."""
        self._outbound_send.close()
        dropped = 0
        for delivery, _ in self._in_flight:
            if not delivery.settled:
                delivery.settle(False)
                dropped += 1
        self._in_flight = []
        while True:
            try:
                delivery = self._outbound_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            delivery.settle(False)
            dropped += 1
        self._outbound_receive.close()
        return dropped

    async def _publish(self, records: Iterable[OutboundRecord]) -> None:
        # Kept until queued: if the session is cancelled while the channel is full (Kafka is slow),
        # cleanup queues what is left before `disconnected`.
        self._unpublished = list(records)
        while self._unpublished:
            # Waits while the bridge is full (backpressure), counting the wait in the metrics.
            await send_event(self.events, self._unpublished[0], self.metrics)
            del self._unpublished[0]

    async def _read_loop(self, stream: ServerStream) -> None:
        while True:
            self._listen()
            try:
                data = await stream.receive_message()
            except (MessageTooLarge, ProtocolViolation) as error:
                log.info("peer_protocol_error", detail=str(error))
                self.end(DisconnectReason.PROTOCOL_ERROR, error.status_code, error.client_message())
                return
            except StreamError:
                self.end(DisconnectReason.STREAM_CLOSED)
                return
            finally:
                self._listening_since = None  # heard from (or gone): not silent while handling it
            if data is None:  # the peer half-closed its side
                self.end(DisconnectReason.STREAM_CLOSED, StatusCode.OK, "stream closed by peer")
                return
            try:
                await self._handle(protocol.decode_peer_message(data))
            except PeerProtocolError as error:
                log.info("peer_protocol_error", detail=error.message)
                self.end(DisconnectReason.PROTOCOL_ERROR, error.code, error.message)
                return

    async def _handle(self, message: pb.PeerMessage) -> None:
        """One decoded message from the registered peer."""
        self.metrics.message_received(message.WhichOneof("payload"))
        records = protocol.records_for_message(message, self.info, self.settings, self.now())
        await self._publish(records)
        if not records and message.WhichOneof("payload") is None:
            log.info("peer_message_kind_unknown", request_id=message.request_id[: protocol.ERROR_TEXT_CHARS])

    async def _write_loop(self, stream: ServerStream) -> None:
        if self.greeting is not None:
            try:
                await stream.send_message(self.greeting.SerializeToString())
            except StreamError:
                self.end(DisconnectReason.STREAM_CLOSED)
                return
            self.metrics.message_sent(self.greeting.WhichOneof("payload"))
        async for delivery in self._outbound_receive:
            batch = self._take_ready(delivery)
            self._in_flight = batch  # settled by close_outbound() if we are cancelled mid-write
            try:
                await stream.send_messages([data for _, data in batch], sent=partial(self._written, batch))
            except StreamError:
                for queued, _ in batch:
                    queued.settle(False)
                self.end(DisconnectReason.STREAM_CLOSED)
                return
            self._in_flight = []

    def _take_ready(self, first: Delivery) -> list[tuple[Delivery, bytes]]:
        """`first` and whatever else is already queued (up to WRITE_BATCH_MESSAGES / _BYTES), serialised,
        for one write; a message over GRPC_MAX_MESSAGE_BYTES is settled not written and left out."""
        batch: list[tuple[Delivery, bytes]] = []
        size = 0
        delivery: Delivery | None = first
        while delivery is not None:
            data = delivery.message.SerializeToString()
            if len(data) > self.settings.grpc_max_message_bytes:
                log.warning("edge_message_too_large", request_id=delivery.message.request_id, bytes=len(data))
                delivery.settle(False)
            else:
                batch.append((delivery, data))
                size += len(data)
            if len(batch) >= WRITE_BATCH_MESSAGES or size >= WRITE_BATCH_BYTES:
                break
            try:
                delivery = self._outbound_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                delivery = None
        return batch

    def _written(self, batch: list[tuple[Delivery, bytes]], index: int) -> None:
        delivery = batch[index][0]
        delivery.settle(True)
        self.metrics.message_sent(delivery.message.WhichOneof("payload"))

    # --- timers and callbacks (run in the timers task or the transport's reader: quick, never wait) ---

    def _listen(self) -> None:
        """The reader starts waiting: the peer is silent from now on until its next message."""
        now = self._listening_since = trio.current_time()
        if self._silence is None and self.end_reason is None:
            self._silence = self.timers.schedule(now + self.settings.peer_timeout_sec, self._check_silence)

    def _check_silence(self, deadline: float) -> float | None:
        try:
            since = self._listening_since
            if since is None:
                # Handling a message (perhaps waiting on a full event channel): not silence. The reader
                # arms a new check when it waits again.
                self._silence = None
                return None
            timeout = self.settings.peer_timeout_sec
            if since + timeout > deadline:
                return since + timeout  # heard from since this check was armed
            self._silence = None
            log.info("peer_timed_out", timeout_sec=timeout, **self._log_context())
            self.end(DisconnectReason.TIMEOUT, message=f"no message from the peer in {timeout} s")
        except Exception:  # a bug in this session's timer ends this session only
            log.exception("peer_session_failed", **self._log_context())
            self.end(DisconnectReason.ERROR, StatusCode.INTERNAL, "internal error")
        return None

    def _beat(self, deadline: float) -> float | None:
        try:
            self.offer(Delivery(protocol.heartbeat(self.now())))
        except trio.WouldBlock:
            # The peer is not reading; if it is also silent its own timeout ends it. Skip this beat.
            log.debug("heartbeat_skipped_queue_full", **self._log_context())
        except SessionGone:
            return None
        except Exception:  # a bug in this session's timer ends this session only
            log.exception("peer_session_failed", **self._log_context())
            self.end(DisconnectReason.ERROR, StatusCode.INTERNAL, "internal error")
            return None
        return deadline + self.settings.heartbeat_interval_sec

    def _stream_gone(self) -> None:
        self.end(DisconnectReason.STREAM_CLOSED)

    def _stop_timers(self) -> None:
        for timer in (self._heartbeat, self._silence):
            if timer is not None:
                timer.cancel()
        self._heartbeat = self._silence = None

    def _log_context(self) -> dict[str, object]:
        # Timer callbacks run in the timers task, outside the peer's structlog context: the one the
        # handler bound (remote_address), kept when the session started, and who the session is.
        return self._context


def _default_message(reason: DisconnectReason) -> str:
    return {
        DisconnectReason.STREAM_CLOSED: "stream closed",
        DisconnectReason.TIMEOUT: "peer timed out",
        DisconnectReason.REPLACED: "replaced by a newer stream for the same peer id",
        DisconnectReason.SHUTDOWN: "edge shutting down",
        DisconnectReason.PROTOCOL_ERROR: "protocol error",
        DisconnectReason.ERROR: "internal error",
    }[reason]
