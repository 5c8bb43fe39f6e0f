"""What peer messages mean: pure functions over protobuf and attrs values, no I/O, no event loop.

A session task decodes bytes into a `PeerMessage`, asks this module what to do with it, and moves the
answer (Kafka records, replies) where it has to go. Every JSON shape of SPEC section 3 that comes from a
peer is built here, so a table of tests can check each field without a loop or a broker.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any, Final

import attrs
from google.protobuf.message import DecodeError

from edge.config import Settings, validate_peer_id
from edge.convert import timestamp
from edge.grpc import StatusCode
from edge.proto import pb
from edge.records import DisconnectReason, OutboundRecord

#: Status each ending sends to the peer (None: nothing can be sent, the stream is gone).
END_STATUS: Final[Mapping[DisconnectReason, StatusCode | None]] = {
    DisconnectReason.STREAM_CLOSED: None,
    DisconnectReason.TIMEOUT: StatusCode.DEADLINE_EXCEEDED,
    DisconnectReason.REPLACED: StatusCode.ABORTED,
    DisconnectReason.SHUTDOWN: StatusCode.UNAVAILABLE,
    DisconnectReason.PROTOCOL_ERROR: StatusCode.INVALID_ARGUMENT,
    DisconnectReason.ERROR: StatusCode.INTERNAL,
}


class PeerProtocolError(Exception):
    """The peer broke the protocol; the session ends with reason `protocol_error`.

    `message` is safe to send to the peer: it never contains internal exception text.
    """

    def __init__(self, message: str, code: StatusCode = StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@attrs.frozen
class SessionInfo:
    """Who a session is, as every record it produces says."""

    edge_id: str
    peer_id: str
    session_id: str
    epoch: int


@attrs.frozen
class Registration:
    peer_id: str
    catalog_uuids: tuple[str, ...]
    request_id: str


def decode_peer_message(data: bytes) -> pb.PeerMessage:
    """Bytes from the wire -> PeerMessage, or PeerProtocolError for undecodable bytes."""
    try:
        return pb.PeerMessage.FromString(data)
    except DecodeError:
        raise PeerProtocolError("message is not a valid PeerMessage") from None


def parse_registration(message: pb.PeerMessage, *, max_catalog_size: int) -> Registration:
    """The first message of a stream -> Registration, or PeerProtocolError saying what is wrong."""
    kind = message.WhichOneof("payload")
    if kind != "registration_request":
        shown = kind or "an unknown or empty payload"
        raise PeerProtocolError(f"first message must be a registration_request, got {shown}")
    request = message.registration_request
    if not validate_peer_id(request.peer_name):
        raise PeerProtocolError(
            "peer_name must be 1 to 128 ASCII letters, digits or . _ - : @"
        )
    if len(request.catalog_uuids) > max_catalog_size:
        raise PeerProtocolError(
            f"registration carries {len(request.catalog_uuids)} catalog ids, more than {max_catalog_size}"
        )
    return Registration(
        peer_id=request.peer_name,
        catalog_uuids=tuple(request.catalog_uuids),
        request_id=message.request_id,
    )


def registration_accepted(
    registration: Registration, info: SessionInfo, settings: Settings
) -> pb.EdgeMessage:
    return pb.EdgeMessage(
        request_id=registration.request_id,
        registration_response=pb.PeerRegistrationResponse(
            peer_name=registration.peer_id,
            edge_name=settings.edge_id,
            success=True,
            heartbeat_interval_sec=settings.heartbeat_interval_sec,
            peer_timeout_sec=settings.peer_timeout_sec,
            session_id=info.session_id,
        ),
    )


def registration_refused(message: pb.PeerMessage | None, error: str, edge_id: str) -> pb.EdgeMessage:
    peer_name = ""
    request_id = ""
    if message is not None:
        request_id = message.request_id
        if message.WhichOneof("payload") == "registration_request":
            peer_name = message.registration_request.peer_name[:128]
    return pb.EdgeMessage(
        request_id=request_id,
        registration_response=pb.PeerRegistrationResponse(
            peer_name=peer_name, edge_name=edge_id, success=False, error_message=error
        ),
    )


def heartbeat(now: datetime.datetime) -> pb.EdgeMessage:
    return pb.EdgeMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=int(now.timestamp() * 1000)))


# Records --------------------------------------------------------------------------------------------


def _envelope(info: SessionInfo, now: datetime.datetime, request_id: str | None) -> dict[str, Any]:
    value: dict[str, Any] = {
        "peer_id": info.peer_id,
        "edge_id": info.edge_id,
        "timestamp": timestamp(now),
    }
    if request_id:
        value["request_id"] = request_id
    return value


def connected_record(info: SessionInfo, settings: Settings, now: datetime.datetime) -> OutboundRecord:
    value = _envelope(info, now, None)
    value.update(event_type="connected", session_id=info.session_id, epoch=info.epoch)
    return OutboundRecord(settings.kafka_peer_lifecycle_events_topic, info.peer_id, value)


def disconnected_record(
    info: SessionInfo, reason: DisconnectReason, settings: Settings, now: datetime.datetime
) -> OutboundRecord:
    value = _envelope(info, now, None)
    value.update(
        event_type="disconnected", session_id=info.session_id, epoch=info.epoch, reason=reason.value
    )
    return OutboundRecord(settings.kafka_peer_lifecycle_events_topic, info.peer_id, value)


def full_catalog_record(
    registration: Registration, info: SessionInfo, settings: Settings, now: datetime.datetime
) -> OutboundRecord:
    value = _envelope(info, now, registration.request_id)
    value.update(
        update_type="full",
        catalog_ids=list(registration.catalog_uuids),
        is_full_update=True,
        session_id=info.session_id,
    )
    return OutboundRecord(settings.kafka_peer_catalog_updates_topic, info.peer_id, value)


def record_for_message(
    message: pb.PeerMessage, info: SessionInfo, settings: Settings, now: datetime.datetime
) -> OutboundRecord | None:
    """The Kafka record a registered peer's message becomes; None for heartbeats and unknown kinds.

    A second registration request is a protocol error (PeerProtocolError).
    """
    kind = message.WhichOneof("payload")
    value = _envelope(info, now, message.request_id)
    if kind == "file_delete_response":
        body = message.file_delete_response
        value.update(catalog_uuid=body.catalog_uuid, success=body.success, error_message=body.error_message)
        topic = settings.kafka_file_delete_responses_topic
    elif kind == "file_hash_response":
        body = message.file_hash_response
        value.update(
            catalog_uuid=body.catalog_uuid, hashes=dict(body.hashes), error_message=body.error_message
        )
        topic = settings.kafka_file_hash_responses_topic
    elif kind == "file_remap_response":
        body = message.file_remap_response
        value.update(
            new_catalog_uuid=body.new_catalog_uuid, success=body.success, error_message=body.error_message
        )
        topic = settings.kafka_file_remap_responses_topic
    elif kind == "batch_file_offer_request":
        body = message.batch_file_offer_request
        value.update(
            update_type="file_offer",
            files=[
                {"peer_luid": f.peer_luid, "relative_path": f.relative_path, "size_bytes": f.size_bytes}
                for f in body.files
            ],
            category_type=body.category_type,
            is_full_update=False,
        )
        topic = settings.kafka_peer_catalog_updates_topic
    elif kind == "screenshot_capture_response":
        value.update(_screenshot_fields(message.screenshot_capture_response, settings.screenshot_max_bytes))
        topic = settings.kafka_screenshot_capture_responses_topic
    elif kind == "registration_request":
        raise PeerProtocolError("registration_request on an already registered stream")
    else:  # heartbeat, or a payload kind from a newer peer (not an error: the caller logs it)
        return None
    return OutboundRecord(topic, info.peer_id, value)


def _screenshot_fields(body: pb.ScreenshotCaptureResponse, max_bytes: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"catalog_uuid": body.catalog_uuid}
    result = body.WhichOneof("result")
    if result == "screenshot":
        size = len(body.screenshot.screenshot)
        if size > max_bytes:
            fields["error_message"] = (
                f"screenshot of {size} bytes exceeds the edge's limit of {max_bytes} bytes"
                " (SCREENSHOT_MAX_BYTES); it was not forwarded"
            )
            fields["screenshot_size_bytes"] = size
        else:
            fields["screenshot"] = {
                "frame_number_in_video": body.screenshot.frame_number_in_video,
                "screenshot": base64.b64encode(body.screenshot.screenshot).decode("ascii"),
            }
    elif result == "error_message":
        fields["error_message"] = body.error_message
    else:
        fields["error_message"] = "peer sent neither a screenshot nor an error_message"
    return fields
