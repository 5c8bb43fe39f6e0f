"""The life of one `Connect` stream: handshake, registration, session, cleanup.

Phases, each under its own deadline:
1. handshake: the first message must arrive within PEER_HANDSHAKE_TIMEOUT_SEC and be a valid
   registration; otherwise the peer gets a refusal (where one can be sent) and a status, and nothing is
   published (an unregistered stream never was a session).
2. registration: the registry makes this the peer's live session (ending an older one with reason
   `replaced`) and the `connected` event is queued; then the registration response goes to the peer and
   the full catalog is queued.
3. the session serves until something ends it.
4. cleanup, always, once the session was announced: leave the registry, queue `disconnected` with the
   reason, mark undelivered commands dropped. It runs shielded under a deadline, so cancellation (a
   replaced session, shutdown, the embedding program cancelling us) cannot skip it.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable

import attrs
import structlog
import trio

from edge.config import Settings
from edge.grpc import ServerStream, Status, StatusCode, StreamError
from edge.peers import protocol
from edge.peers.admission import Admission
from edge.peers.protocol import PeerProtocolError, Registration, SessionInfo
from edge.peers.registry import PeerLimitReached, PeerRegistry, TakeoverTimedOut
from edge.peers.session import Session
from edge.proto import pb
from edge.records import DisconnectReason, OutboundRecord

log = structlog.get_logger(__name__)

#: How long a refusal may take to write before the stream is closed without it.
REFUSAL_WRITE_TIMEOUT: float = 5.0


@attrs.frozen
class PeerStreamHandler:
    """Handles `Connect` streams. One instance per edge, shared by every stream."""

    settings: Settings
    registry: PeerRegistry
    events: trio.MemorySendChannel[OutboundRecord]
    now: Callable[[], datetime.datetime]
    #: Identity check of the claimed peer id (edge.peers.admission); None: no check.
    admission: Admission | None = None

    async def __call__(self, stream: ServerStream) -> Status:
        structlog.contextvars.bind_contextvars(remote_address=_address(stream))
        first, registration_or_status = await self._handshake(stream)
        if isinstance(registration_or_status, Status):
            return registration_or_status
        registration = registration_or_status
        info = SessionInfo(
            edge_id=self.settings.edge_id,
            peer_id=registration.peer_id,
            session_id=str(uuid.uuid4()),
            epoch=self.registry.next_epoch(),
        )
        structlog.contextvars.bind_contextvars(peer_id=info.peer_id, session_id=info.session_id)
        session = Session(info=info, settings=self.settings, events=self.events, now=self.now)
        try:
            try:
                await self.registry.register(session, lambda: self._announce(info))
            except PeerLimitReached:
                log.warning("peer_refused_limit", max_peers=self.settings.max_peers)
                message = f"edge is at its peer limit ({self.settings.max_peers})"
                await self._refuse(stream, first, message)
                return Status(StatusCode.RESOURCE_EXHAUSTED, message)
            except TakeoverTimedOut:
                log.warning("peer_takeover_timed_out")
                return Status(StatusCode.UNAVAILABLE, "previous session for this peer id is still closing")
            log.info("peer_connected", epoch=info.epoch, catalog_size=len(registration.catalog_uuids))
            await stream.send_message(
                protocol.registration_accepted(registration, info, self.settings).SerializeToString()
            )
            await self.events.send(protocol.full_catalog_record(registration, info, self.settings, self.now()))
            return await session.serve(stream)
        except StreamError:  # the peer went away while we wrote the response
            session.end(DisconnectReason.STREAM_CLOSED)
            return Status(StatusCode.CANCELLED, "stream closed")
        finally:
            await self._cleanup(session)

    async def _handshake(self, stream: ServerStream) -> tuple[pb.PeerMessage | None, Registration | Status]:
        timeout = self.settings.peer_handshake_timeout_sec
        first: pb.PeerMessage | None = None
        with trio.move_on_after(timeout) as handshake:
            data = await stream.receive_message()
        if handshake.cancelled_caught:
            log.info("peer_handshake_timeout", timeout_sec=timeout)
            message = f"no registration within {timeout:g} s"
            await self._refuse(stream, None, message)
            return None, Status(StatusCode.DEADLINE_EXCEEDED, message)
        if data is None:
            log.info("peer_closed_before_registration")
            return None, Status(StatusCode.INVALID_ARGUMENT, "stream ended before registration")
        try:
            first = protocol.decode_peer_message(data)
            registration = protocol.parse_registration(first, max_catalog_size=self.settings.max_catalog_size)
            if self.admission is not None:
                self.admission.authorize(stream, registration)  # UNAUTHENTICATED / PERMISSION_DENIED
            return first, registration
        except PeerProtocolError as error:
            log.info("peer_registration_refused", detail=error.message)
            await self._refuse(stream, first, error.message)
            return first, Status(error.code, error.message)

    async def _announce(self, info: SessionInfo) -> None:
        await self.events.send(protocol.connected_record(info, self.settings, self.now()))

    async def _refuse(self, stream: ServerStream, first: pb.PeerMessage | None, message: str) -> None:
        refusal = protocol.registration_refused(first, message, self.settings.edge_id)
        with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
            try:
                await stream.send_message(refusal.SerializeToString())
            except StreamError:
                pass  # the peer is gone; the status is all it would have got anyway

    async def _cleanup(self, session: Session) -> None:
        self.registry.release(session)
        reason = session.end_reason or DisconnectReason.SHUTDOWN
        if session.end_reason is None:
            session.end(reason)  # cancelled from outside (shutdown): record it
        dropped = session.close_outbound()
        try:
            if not session.announced:
                return
            record = protocol.disconnected_record(session.info, reason, self.settings, self.now())
            lost = False
            with trio.move_on_after(self.settings.shutdown_timeout_sec, shield=True) as publish:
                try:
                    await self.events.send(record)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    lost = True  # the bridge is already gone: only possible if it crashed
            if lost or publish.cancelled_caught:
                log.error("peer_disconnect_event_lost", reason=reason.value, value=record.value)
            log.info("peer_disconnected", reason=reason.value, undelivered=dropped)
        finally:
            session.ended.set()


def _address(stream: ServerStream) -> str | None:
    address = stream.remote_address
    if address is None:
        return None
    return f"{address[0]}:{address[1]}"
