"""The life of one `Connect` stream: handshake, registration, session, cleanup.

Phases, each under its own deadline:

1. handshake: the first message must arrive within PEER_HANDSHAKE_TIMEOUT_SEC and be a valid
   registration; otherwise the peer gets a refusal (a registration response with `success: false`,
   where one can be sent) and a status, the refusal is logged, and nothing is published: an
   unregistered stream never was a session.
2. registration: the registry makes this the peer's live session (ending an older one with reason
   `replaced` and waiting, up to SHUTDOWN_TIMEOUT_SEC, for its `disconnected` to be queued), refuses it
   over MAX_PEERS (RESOURCE_EXHAUSTED), numbers it (epoch) and queues `connected`. The session's
   writer sends the registration response before anything else.
3. the session publishes the full catalog and serves until something ends it (`session.py`).
4. cleanup, always, once the session was announced: settle undelivered commands as not written, and
   hand what the reader had read but not yet queued, then `disconnected` with the reason, to
   `serve_endings`, which queues them however long Kafka takes, then releases the session from the
   registry and marks it ended (the router stopped finding it when it ended). The handover does not
   wait (one pending ending per announced session), so cancellation (a replaced session, shutdown,
   the transport after a reset) cannot skip it.

Status of each ending (the stream's final gRPC status; a reset stream gets none):

    handshake timeout                 DEADLINE_EXCEEDED
    bad first message / peer id       INVALID_ARGUMENT (after a refusal response)
    oversized first message, catalog  RESOURCE_EXHAUSTED (after a refusal response)
    over MAX_PEERS                    RESOURCE_EXHAUSTED (after a refusal response)
    takeover timed out                UNAVAILABLE
    session ended                     see `protocol.END_STATUS`
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable

import attrs
import structlog
import trio

from edge.config import Settings
from edge.grpc import MessageTooLarge, ProtocolViolation, ServerStream, Status, StatusCode, StreamError
from edge.handoff import EventSender, send_event
from edge.ops.metrics import EdgeMetrics
from edge.peers import protocol
from edge.peers.admission import Admission
from edge.peers.endings import Ending
from edge.peers.protocol import PeerProtocolError, Registration, SessionInfo
from edge.peers.registry import PeerLimitReached, PeerRegistry, TakeoverTimedOut
from edge.peers.session import Session
from edge.proto import pb
from edge.records import DisconnectReason
from edge.timers import Timers

log = structlog.get_logger(__name__)

#: How long a refusal may take to write before the stream is closed without it.
REFUSAL_WRITE_TIMEOUT: float = 5.0


@attrs.frozen
class PeerStreamHandler:
    """Handles `Connect` streams. One instance per edge, shared by every stream."""

    settings: Settings
    registry: PeerRegistry
    events: EventSender
    now: Callable[[], datetime.datetime]
    #: Where each ended session's last records go (see `endings.serve_endings`).
    endings: trio.MemorySendChannel[Ending]
    #: Identity check of the claimed peer id (edge.peers.admission); None: no check.
    admission: Admission | None = None
    metrics: EdgeMetrics = attrs.field(kw_only=True)
    #: The edge's timers (`serve_timers`): handshake deadlines, and each session's heartbeat and
    #: silence check.
    timers: Timers = attrs.field(kw_only=True)

    async def __call__(self, stream: ServerStream) -> Status | None:
        structlog.contextvars.bind_contextvars(remote_address=_address(stream))
        outcome = await self._handshake(stream)
        if not isinstance(outcome, Registration):
            return outcome
        registration = outcome
        try:
            session = await self.registry.register(
                registration.peer_id,
                lambda epoch: self._new_session(registration, epoch),
                self._announce,
            )
        except PeerLimitReached:
            self.metrics.registrations_refused.labels(cause="peer_limit").inc()
            message = f"edge is at its peer limit ({self.settings.max_peers})"
            log.warning("peer_refused_limit", peer_id=registration.peer_id, max_peers=self.settings.max_peers)
            await self._refuse(stream, message, request_id=registration.request_id, peer_name=registration.peer_id)
            return Status(StatusCode.RESOURCE_EXHAUSTED, message)
        except TakeoverTimedOut:
            self.metrics.registrations_refused.labels(cause="takeover_timeout").inc()
            log.warning("peer_takeover_timed_out", peer_id=registration.peer_id)
            return Status(StatusCode.UNAVAILABLE, "previous session for this peer id is still closing")
        info = session.info
        structlog.contextvars.bind_contextvars(peer_id=info.peer_id, session_id=info.session_id)
        log.info("peer_connected", epoch=info.epoch, catalog_size=len(registration.catalog_uuids))
        self.metrics.session_started()
        try:
            return await session.serve(stream, registration)
        finally:
            await self._cleanup(session, stream)

    async def _handshake(self, stream: ServerStream) -> Registration | Status | None:
        """The registration, or the status that ends the stream (None: the peer is already gone)."""
        timeout = self.settings.peer_handshake_timeout_sec
        unreadable: StreamError | None = None
        data: bytes | None = None
        # A scope without a deadline, cancelled by the edge's timers (no task or deadline of its own).
        with trio.CancelScope() as handshake:
            timer = self.timers.schedule(trio.current_time() + timeout, lambda _: handshake.cancel())
            try:
                data = await stream.receive_message()
            except (MessageTooLarge, ProtocolViolation) as error:
                unreadable = error
            except StreamError:
                log.debug("peer_gone_before_registration")
                return None
            finally:
                timer.cancel()
        if handshake.cancelled_caught:
            self.metrics.registrations_refused.labels(cause="handshake_timeout").inc()
            message = f"no registration within {timeout:g} s"
            log.info("peer_registration_refused", detail=message)
            await self._refuse(stream, message)
            return Status(StatusCode.DEADLINE_EXCEEDED, message)
        if unreadable is not None:
            status = unreadable.status()
            assert status is not None  # only StreamReset has none, and it is handled above
            self.metrics.registration_refused(status.status_code)
            log.info("peer_registration_refused", detail=status.status_message)
            await self._refuse(stream, status.status_message)
            return status
        if data is None:
            self.metrics.registrations_refused.labels(cause="closed").inc()
            message = "stream ended before registration"
            log.info("peer_registration_refused", detail=message)
            await self._refuse(stream, message)
            return Status(StatusCode.INVALID_ARGUMENT, message)
        first: pb.PeerMessage | None = None
        try:
            first = protocol.decode_peer_message(data)
            self.metrics.message_received(first.WhichOneof("payload"))
            registration = protocol.parse_registration(first, self.settings)
            if self.admission is not None:
                self.admission.authorize(stream, registration)  # UNAUTHENTICATED / PERMISSION_DENIED
            return registration
        except PeerProtocolError as error:
            self.metrics.registration_refused(error.code)
            log.info("peer_registration_refused", detail=error.message)
            await self._refuse(stream, error.message, **protocol.echo_of(first))
            return Status(error.code, error.message)

    def _new_session(self, registration: Registration, epoch: int) -> Session:
        info = SessionInfo(
            edge_id=self.settings.edge_id,
            peer_id=registration.peer_id,
            session_id=str(uuid.uuid4()),
            epoch=epoch,
        )
        return Session(
            info=info,
            settings=self.settings,
            events=self.events,
            now=self.now,
            greeting=protocol.registration_accepted(registration, info, self.settings),
            metrics=self.metrics,
            timers=self.timers,
        )

    async def _announce(self, session: Session) -> None:
        connected = protocol.connected_record(session.info, self.settings, self.now())
        await send_event(self.events, connected, self.metrics)
        # `connected` is queued: the session counts as announced, so its presence twin must follow
        # even if the registration is cancelled now (bounded, as every shielded cleanup).
        with trio.move_on_after(self.settings.shutdown_timeout_sec, shield=True):
            await send_event(self.events, protocol.presence_record(connected, self.settings), self.metrics)

    async def _refuse(self, stream: ServerStream, message: str, *, request_id: str = "", peer_name: str = "") -> None:
        refusal = protocol.registration_refused(
            message, self.settings.edge_id, request_id=request_id, peer_name=peer_name
        )
        with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
            try:
                await stream.send_message(refusal.SerializeToString())
            except StreamError:
                pass  # the peer is gone; the status is all it would have got anyway

    async def _cleanup(self, session: Session, stream: ServerStream) -> None:
        if session.end_reason is None:
            # Cancelled from outside the session: by the transport once the peer's own call deadline
            # (grpc-timeout) passed or its stream was gone, else by shutdown.
            gone = stream.terminated or trio.current_time() >= stream.deadline
            session.end(DisconnectReason.STREAM_CLOSED if gone else DisconnectReason.SHUTDOWN)
        reason = session.end_reason
        assert reason is not None
        dropped = session.close_outbound()
        log.info("peer_disconnected", reason=reason.value, epoch=session.info.epoch, undelivered=dropped)
        self.metrics.session_ended(reason.value)
        ending: Ending | None = None
        handed_over = False
        try:
            disconnected = protocol.disconnected_record(session.info, reason, self.settings, self.now())
            ending = Ending(
                session,
                [
                    *session.take_unpublished(),
                    disconnected,
                    protocol.presence_record(disconnected, self.settings),
                ],
                finished=lambda: self.registry.finish(session),
            )
            try:
                self.endings.send_nowait(ending)
                handed_over = True
            except trio.WouldBlock:
                # Room for MAX_PEERS pending endings: only churn while Kafka is away gets here.
                with trio.move_on_after(self.settings.shutdown_timeout_sec, shield=True):
                    await self.endings.send(ending)
                    handed_over = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the relay is gone: only possible if it crashed
        finally:
            if not handed_over:
                # Never leave the session registered: its peer could not register again.
                if ending is not None:
                    ending.lost()
                else:
                    self.registry.finish(session)


def _address(stream: ServerStream) -> str | None:
    address = stream.remote_address
    if address is None:
        return None
    return f"{address[0]}:{address[1]}"
