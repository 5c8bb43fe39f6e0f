"""What peer messages mean: pure functions over protobuf and attrs values, no I/O, no event loop.

A session task decodes bytes into a `PeerMessage`, asks this module what to do with it, and moves the
answer (Kafka records, replies) where it has to go. Every JSON shape of docs/protocol.md#kafka-contract that
comes from a peer is built here, so a table of tests can check each field without a loop or a broker.

Record size. A peer may send messages up to GRPC_MAX_MESSAGE_BYTES (4 MiB), but Kafka takes records of
about 1 MB by default, and a record the producer cannot send would be retried forever and stall every
event behind it. So no record built here encodes to more than KAFKA_MAX_RECORD_BYTES:

* a full catalog or a file offer that does not fit is split into consecutive records that share the
  `request_id` (and `session_id`), numbered by `part` (1-based) and `parts`; every such record carries
  `part`/`parts`, `1`/`1` when it fits in one. The catalog is the union of its parts;
* a response (delete, hash, remap, screenshot) that does not fit becomes an error record of the same
  kind: the same fields emptied, long strings cut to ERROR_TEXT_CHARS, `success: false` where the kind
  has it, `error_message` saying why and `record_size_bytes`. Never a silent drop;
* a registration whose request_id or catalog ids are so long that a single one cannot fit is refused
  (RESOURCE_EXHAUSTED), and so is a file offer with such an item (the session ends, `protocol_error`).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
from google.protobuf.message import DecodeError

from edge.config import Settings, validate_peer_id
from edge.convert import timestamp
from edge.grpc import StatusCode
from edge.proto import pb
from edge.records import DisconnectReason, OutboundRecord, encode_json

#: Status each ending sends to the peer (None: nothing can be sent, the stream is gone; a peer that
#: half-closed gets OK).
END_STATUS: Final[Mapping[DisconnectReason, StatusCode | None]] = {
    DisconnectReason.STREAM_CLOSED: None,
    DisconnectReason.TIMEOUT: StatusCode.DEADLINE_EXCEEDED,
    DisconnectReason.REPLACED: StatusCode.ABORTED,
    DisconnectReason.SHUTDOWN: StatusCode.UNAVAILABLE,
    DisconnectReason.PROTOCOL_ERROR: StatusCode.INVALID_ARGUMENT,
    DisconnectReason.ERROR: StatusCode.INTERNAL,
}

#: Characters of a peer's string kept in an error record that replaces an oversized one.
ERROR_TEXT_CHARS: Final = 256

# Placeholders for the largest values a record's own fields can take, to bound record sizes before a
# session exists (a uuid4 session id; an epoch of 19 digits; a timestamp is always 24 characters).
_SESSION_ID_PLACEHOLDER: Final = "0" * 36
_EPOCH_PLACEHOLDER: Final = 10**18
_TIME_PLACEHOLDER: Final = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


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


def parse_registration(message: pb.PeerMessage, settings: Settings) -> Registration:
    """The first message of a stream -> Registration, or PeerProtocolError saying what is wrong."""
    kind = message.WhichOneof("payload")
    if kind != "registration_request":
        shown = kind or "an unknown or empty payload"
        raise PeerProtocolError(f"first message must be a registration_request, got {shown}")
    request = message.registration_request
    if not validate_peer_id(request.peer_name):
        raise PeerProtocolError("peer_name must be 1 to 128 ASCII letters, digits or . _ - : @")
    limit = settings.max_catalog_size
    if len(request.catalog_uuids) > limit:
        raise PeerProtocolError(
            f"registration carries {len(request.catalog_uuids)} catalog ids, more than {limit}"
            " (MAX_CATALOG_SIZE)",
            StatusCode.RESOURCE_EXHAUSTED,
        )
    registration = Registration(
        peer_id=request.peer_name,
        catalog_uuids=tuple(request.catalog_uuids),
        request_id=message.request_id,
    )
    if _catalog_item_bound(registration, settings) > settings.kafka_max_record_bytes:
        raise PeerProtocolError(
            "a catalog id or the request_id is too long to publish"
            f" (records are at most {settings.kafka_max_record_bytes} bytes)",
            StatusCode.RESOURCE_EXHAUSTED,
        )
    return registration


def _catalog_item_bound(registration: Registration, settings: Settings) -> int:
    """An upper bound on the size of a catalog record holding just the longest catalog id."""
    info = SessionInfo(settings.edge_id, registration.peer_id, _SESSION_ID_PLACEHOLDER, _EPOCH_PLACEHOLDER)
    empty = Registration(registration.peer_id, (), "")
    base = _catalog_value(empty, info, _TIME_PLACEHOLDER)
    base.update(part=_EPOCH_PLACEHOLDER, parts=_EPOCH_PLACEHOLDER)
    longest = max(registration.catalog_uuids, key=len, default="")
    return len(encode_json(base)) + _json_bound(registration.request_id) + _json_bound(longest)


def _json_bound(text: str) -> int:
    """Bytes `text` takes at most as a JSON string: quotes, and 6 bytes per character (a \\uXXXX escape;
    UTF-8 needs at most 4, a surrogate pair 12 for 2 characters)."""
    return 6 * len(text) + 2


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


def registration_refused(error: str, edge_id: str, *, request_id: str = "", peer_name: str = "") -> pb.EdgeMessage:
    """The refusal sent before the status when registration fails. Echoes only bounded parts of what
    the peer sent (a refused message is untrusted: it may be huge)."""
    return pb.EdgeMessage(
        request_id=request_id[:ERROR_TEXT_CHARS],
        registration_response=pb.PeerRegistrationResponse(
            peer_name=peer_name[:128], edge_name=edge_id, success=False, error_message=error
        ),
    )


def echo_of(message: pb.PeerMessage | None) -> dict[str, str]:
    """What a refusal echoes of a (possibly bad) first message: its request_id and claimed peer name."""
    if message is None:
        return {}
    echo = {"request_id": message.request_id}
    if message.WhichOneof("payload") == "registration_request":
        echo["peer_name"] = message.registration_request.peer_name
    return echo


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


def presence_record(lifecycle: OutboundRecord, settings: Settings) -> OutboundRecord:
    """The same lifecycle value on the compacted presence topic, keyed by the peer id: compaction keeps
    each peer's last one, which every edge reads at start-up (docs/scaling.md#presence)."""
    return OutboundRecord(settings.kafka_peer_presence_topic, lifecycle.key, lifecycle.value)


def _catalog_value(registration: Registration, info: SessionInfo, now: datetime.datetime) -> dict[str, Any]:
    value = _envelope(info, now, registration.request_id)
    value.update(
        update_type="full",
        catalog_ids=list(registration.catalog_uuids),
        is_full_update=True,
        session_id=info.session_id,
    )
    return value


def full_catalog_records(
    registration: Registration, info: SessionInfo, settings: Settings, now: datetime.datetime
) -> tuple[OutboundRecord, ...]:
    """The peer's full catalog: one record, or several `part`s when it is over KAFKA_MAX_RECORD_BYTES.

    Cannot fail for a Registration from `parse_registration`, which refuses ids too long to publish.
    """
    value = _catalog_value(registration, info, now)
    try:
        parts = split_record(value, "catalog_ids", settings.kafka_max_record_bytes)
    except RecordTooLarge:
        raise AssertionError("parse_registration admits only catalogs that can be published") from None
    return tuple(OutboundRecord(settings.kafka_peer_catalog_updates_topic, info.peer_id, part) for part in parts)


def records_for_message(
    message: pb.PeerMessage, info: SessionInfo, settings: Settings, now: datetime.datetime
) -> tuple[OutboundRecord, ...]:
    """The Kafka records a registered peer's message becomes; none for heartbeats and unknown kinds.

    A second registration request, or a file offer with an item too large to publish, is a protocol
    error (PeerProtocolError).
    """
    kind = message.WhichOneof("payload")
    value = _envelope(info, now, message.request_id)
    limit = settings.kafka_max_record_bytes
    if kind == "batch_file_offer_request":
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
        try:
            parts = split_record(value, "files", limit)
        except RecordTooLarge:
            raise PeerProtocolError(
                f"batch_file_offer_request cannot be published: a file item or the request_id is too"
                f" long (records are at most {limit} bytes)",
                StatusCode.RESOURCE_EXHAUSTED,
            ) from None
        topic = settings.kafka_peer_catalog_updates_topic
        return tuple(OutboundRecord(topic, info.peer_id, part) for part in parts)
    if kind == "file_delete_response":
        deleted = message.file_delete_response
        value.update(
            catalog_uuid=deleted.catalog_uuid, success=deleted.success, error_message=deleted.error_message
        )
        topic = settings.kafka_file_delete_responses_topic
    elif kind == "file_hash_response":
        hashed = message.file_hash_response
        value.update(
            catalog_uuid=hashed.catalog_uuid, hashes=dict(hashed.hashes), error_message=hashed.error_message
        )
        topic = settings.kafka_file_hash_responses_topic
    elif kind == "file_remap_response":
        remap = message.file_remap_response
        value.update(
            new_catalog_uuid=remap.new_catalog_uuid, success=remap.success, error_message=remap.error_message
        )
        topic = settings.kafka_file_remap_responses_topic
    elif kind == "screenshot_capture_response":
        value.update(_screenshot_fields(message.screenshot_capture_response, settings.screenshot_max_bytes))
        topic = settings.kafka_screenshot_capture_responses_topic
    elif kind == "registration_request":
        raise PeerProtocolError("registration_request on an already registered stream")
    else:  # heartbeat, or a payload kind from a newer peer (not an error: the caller logs it)
        return ()
    size = len(encode_json(value))
    if size > limit:
        value = oversized_response(value, size, limit)
    return (OutboundRecord(topic, info.peer_id, value),)


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


# Record size ----------------------------------------------------------------------------------------


class RecordTooLarge(Exception):
    """A record cannot be cut to fit: its fields without the list, plus one item, are over the limit."""


def split_record(value: Mapping[str, Any], field: str, limit: int) -> list[dict[str, Any]]:
    """`value` as consecutive parts whose `field` lists together hold every item in order, each part
    encoding to at most `limit` bytes, with `part` (1-based) and `parts` added. Raises RecordTooLarge."""
    items: Sequence[Any] = value[field]
    # Size with `part`/`parts` at the most digits they can have: the real numbers only shrink it.
    most = max(len(items), 1)
    probe = {**value, "part": most, "parts": most}
    total = len(encode_json(probe))
    if total <= limit:
        return [{**value, "part": 1, "parts": 1}]
    probe[field] = []
    empty = len(encode_json(probe))
    if empty >= limit:
        raise RecordTooLarge
    per_item = max(1.0, (total - empty) / len(items))
    chunks: list[Sequence[Any]] = []
    start = 0
    while start < len(items):
        count = max(1, min(len(items) - start, int((limit - empty) / per_item)))
        while True:
            probe[field] = items[start : start + count]
            size = len(encode_json(probe))
            if size <= limit:
                break
            if count == 1:
                raise RecordTooLarge
            count = min(count - 1, max(1, count * (limit - empty) // (size - empty)))
        chunks.append(items[start : start + count])
        start += count
    return [{**value, field: list(chunk), "part": n, "parts": len(chunks)} for n, chunk in enumerate(chunks, 1)]


def oversized_response(value: Mapping[str, Any], size: int, limit: int) -> dict[str, Any]:
    """The error record that stands in for a response record of `size` bytes over `limit`: same kind
    of fields, emptied or cut to ERROR_TEXT_CHARS, and an error_message saying why."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, str):
            out[key] = item[:ERROR_TEXT_CHARS]
        elif isinstance(item, bool):
            out[key] = False  # `success`
        elif isinstance(item, dict):
            if key == "hashes":
                out[key] = {}
            # a nested screenshot is dropped: the error_message replaces it
        else:
            out[key] = item
    out["error_message"] = (
        f"response of {size} bytes exceeds the edge's record limit of {limit} bytes"
        " (KAFKA_MAX_RECORD_BYTES); it was not forwarded"
    )
    out["record_size_bytes"] = size
    return out
