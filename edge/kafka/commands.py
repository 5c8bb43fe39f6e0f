"""Commands in: what a record on the command topic means, as pure functions over values.

    parse_command(value bytes)  -> Command (with its EdgeMessage built)  or  DeadLetter(reason, detail)
    dead_letter_record(...)     -> the dead-letter topic's OutboundRecord (docs/protocol.md#dead-letters)

A command is `{"peer_id", "command_type", "command_data", "request_id"?, "expires_at"?}`. Parsing goes
through the edge's one strict cattrs converter, so `"quantity": "3"` or `"catalog_uuids": "abc"` is
refused with a path, never coerced. Checks run in this order, and the first failure names the reason:

1. the bytes are UTF-8 JSON text                               else `invalid_json` (original = raw text)
2. it is an object with a valid `peer_id` and a string
   `command_type`, and `request_id`/`expires_at` have the right types     else `invalid_command`
3. `command_type` is one this edge knows                         else `unknown_command_type`
4. `command_data` has the fields and types of that type, and the
   EdgeMessage it becomes fits GRPC_MAX_MESSAGE_BYTES            else `invalid_command`
5. `expires_at`, if given, is still in the future                else `expired` (attempts 0)

Unknown extra keys are ignored (a newer backend may add some). A missing, null or empty `request_id` is
replaced by a fresh one, which the dead letter and the EdgeMessage both carry.
"""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs

from edge.config import validate_peer_id
from edge.convert import make_converter, timestamp
from edge.proto import pb
from edge.records import OutboundRecord

#: Largest encoded dead-letter value: under Kafka's default 1 MB record limit with room for headers.
DEAD_LETTER_MAX_BYTES: Final = 900_000
#: Longest text kept of an original that does not fit (the record says it was cut).
ORIGINAL_TRUNCATED_CHARS: Final = 64 * 1024
#: Largest int32, the proto type of `quantity`.
INT32_MAX: Final = 2**31 - 1


class Reason(str, enum.Enum):
    """Dead-letter reason codes (docs/protocol.md#dead-letters)."""

    PEER_NOT_CONNECTED = "peer_not_connected"
    INVALID_JSON = "invalid_json"
    INVALID_COMMAND = "invalid_command"
    UNKNOWN_COMMAND_TYPE = "unknown_command_type"
    DELIVERY_FAILED = "delivery_failed"
    EXPIRED = "expired"


@attrs.frozen
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int


# command_data of each command_type -------------------------------------------------------------


@attrs.frozen
class FileDelete:
    catalog_uuids: tuple[str, ...]


@attrs.frozen
class FileHash:
    catalog_uuid: str
    hash_types: tuple[str, ...]


@attrs.frozen
class FileRemap:
    old_catalog_uuid: str
    new_catalog_uuid: str


@attrs.frozen
class ScreenshotCapture:
    catalog_uuid: str
    quantity: int
    upload_token: str
    upload_endpoint: str


@attrs.frozen
class OfferResult:
    peer_luid: str
    catalog_uuid: str


@attrs.frozen
class BatchFileOfferResponse:
    files: tuple[OfferResult, ...]


CommandData = FileDelete | FileHash | FileRemap | ScreenshotCapture | BatchFileOfferResponse

#: command_type -> the attrs class its command_data is structured into.
COMMAND_TYPES: Final[Mapping[str, type]] = {
    "file_delete": FileDelete,
    "file_hash": FileHash,
    "file_remap": FileRemap,
    "screenshot_capture": ScreenshotCapture,
    "batch_file_offer_response": BatchFileOfferResponse,
}


@attrs.frozen
class Command:
    """A valid command, ready to offer: `message` is the EdgeMessage the peer gets."""

    peer_id: str
    command_type: str
    data: CommandData
    request_id: str
    expires_at: datetime.datetime | None
    message: pb.EdgeMessage = attrs.field(eq=False, repr=False)
    source: Source
    original: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class DeadLetter:
    """A record that will not reach a peer, and why."""

    reason: Reason
    detail: str
    source: Source
    original: Any = attrs.field(repr=False)
    attempts: int = 0
    peer_id: str | None = None
    request_id: str | None = None


class _Invalid(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def new_request_id() -> str:
    return str(uuid.uuid4())


@attrs.frozen
class CommandParser:
    """Parses command records. One per bridge; holds the converter (built once, not a singleton)."""

    max_message_bytes: int
    new_request_id: Callable[[], str] = new_request_id
    converter: cattrs.Converter = attrs.field(factory=make_converter, eq=False, repr=False)

    def parse(self, value: bytes | None, source: Source, now: datetime.datetime) -> Command | DeadLetter:
        """The command in `value`, or the dead letter it becomes. Never raises for any input."""
        if value is None:
            return DeadLetter(Reason.INVALID_JSON, "record has no value (a tombstone)", source, None)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raw = value.decode("utf-8", errors="backslashreplace")
            return DeadLetter(Reason.INVALID_JSON, f"value is not UTF-8 text: {error.reason} at byte {error.start}", source, raw)
        try:
            document = json.loads(text)
        except ValueError as error:  # JSONDecodeError, and RecursionError's cousin for absurd nesting
            return DeadLetter(Reason.INVALID_JSON, f"value is not JSON: {error}", source, text)
        except RecursionError:
            return DeadLetter(Reason.INVALID_JSON, "value is not JSON: nested too deeply", source, text)
        peer_id: str | None = None
        request_id: str | None = None
        try:
            if not isinstance(document, dict):
                raise _Invalid(Reason.INVALID_COMMAND, f"a command is a JSON object, got {_json_kind(document)}")
            peer_id = _peer_id(document)
            request_id = _request_id(document) or self.new_request_id()
            expires_at = _expires_at(document)
            command_type = _command_type(document)
            data = self._command_data(command_type, document)
            message = edge_message(command_type, data, request_id)
            size = message.ByteSize()
            if size > self.max_message_bytes:
                raise _Invalid(
                    Reason.INVALID_COMMAND,
                    f"the command is {size} bytes as a gRPC message, over GRPC_MAX_MESSAGE_BYTES ({self.max_message_bytes})",
                )
        except _Invalid as invalid:
            return DeadLetter(invalid.reason, invalid.detail, source, document, 0, peer_id, request_id)
        if expires_at is not None and expires_at <= now:
            return DeadLetter(
                Reason.EXPIRED,
                f"expired at {timestamp(expires_at)}, before the edge read it at {timestamp(now)}",
                source,
                document,
                0,
                peer_id,
                request_id,
            )
        return Command(peer_id, command_type, data, request_id, expires_at, message, source, document)

    def _command_data(self, command_type: str, document: Mapping[str, Any]) -> CommandData:
        if "command_data" not in document:
            raise _Invalid(Reason.INVALID_COMMAND, "command_data is missing")
        raw = document["command_data"]
        if not isinstance(raw, dict):
            raise _Invalid(Reason.INVALID_COMMAND, f"command_data must be an object, got {_json_kind(raw)}")
        try:
            data: CommandData = self.converter.structure(raw, COMMAND_TYPES[command_type])
        except (cattrs.BaseValidationError, TypeError, ValueError) as error:
            raise _Invalid(Reason.INVALID_COMMAND, _describe(error, command_type)) from None
        if isinstance(data, ScreenshotCapture) and not 1 <= data.quantity <= INT32_MAX:
            raise _Invalid(
                Reason.INVALID_COMMAND, f"command_data.quantity must be from 1 to {INT32_MAX}, got {data.quantity}"
            )
        return data


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _peer_id(document: Mapping[str, Any]) -> str:
    peer_id = document.get("peer_id")
    if not isinstance(peer_id, str):
        shown = "missing" if "peer_id" not in document else f"{_json_kind(peer_id)}, not a string"
        raise _Invalid(Reason.INVALID_COMMAND, f"peer_id is {shown}")
    if not validate_peer_id(peer_id):
        raise _Invalid(Reason.INVALID_COMMAND, "peer_id must be 1 to 128 ASCII letters, digits or . _ - : @")
    return peer_id


def _request_id(document: Mapping[str, Any]) -> str | None:
    request_id = document.get("request_id")
    if request_id is None or request_id == "":
        return None
    if not isinstance(request_id, str):
        raise _Invalid(Reason.INVALID_COMMAND, f"request_id must be a string, got {_json_kind(request_id)}")
    return request_id


def _expires_at(document: Mapping[str, Any]) -> datetime.datetime | None:
    raw = document.get("expires_at")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _Invalid(Reason.INVALID_COMMAND, f"expires_at must be an ISO-8601 string, got {_json_kind(raw)}")
    try:
        parsed = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise _Invalid(Reason.INVALID_COMMAND, f"expires_at is not an ISO-8601 time: {raw[:64]!r}") from None
    if parsed.tzinfo is None:  # read as UTC, as the edge's converter does
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _command_type(document: Mapping[str, Any]) -> str:
    command_type = document.get("command_type")
    if not isinstance(command_type, str):
        shown = "missing" if "command_type" not in document else f"{_json_kind(command_type)}, not a string"
        raise _Invalid(Reason.INVALID_COMMAND, f"command_type is {shown}")
    if command_type not in COMMAND_TYPES:
        known = ", ".join(COMMAND_TYPES)
        raise _Invalid(Reason.UNKNOWN_COMMAND_TYPE, f"command_type {command_type[:64]!r} is not one of {known}")
    return command_type


def _describe(error: Exception, command_type: str) -> str:
    def message(exc: BaseException, type_: Any) -> str:
        if isinstance(exc, KeyError):
            return "required field missing"
        if isinstance(exc, (TypeError, ValueError)) and str(exc):
            return str(exc)
        return cattrs.v.format_exception(exc, type_)

    if isinstance(error, cattrs.BaseValidationError):
        problems = cattrs.transform_error(error, path="command_data", format_exception=message)
    else:
        problems = [f"{message(error, None)} @ command_data"]
    return f"command_data is not valid for {command_type}: " + "; ".join(problems[:10])


# EdgeMessages ----------------------------------------------------------------------------------


def edge_message(command_type: str, data: CommandData, request_id: str) -> pb.EdgeMessage:
    """The EdgeMessage a command becomes (docs/protocol.md#commands, #messages), carrying its request_id.

    Raises _Invalid for text protobuf cannot carry (e.g. unpaired surrogates from a JSON escape).
    """
    try:
        if isinstance(data, FileDelete):
            return pb.EdgeMessage(
                request_id=request_id, file_delete_request=pb.FileDeleteRequest(catalog_uuids=list(data.catalog_uuids))
            )
        if isinstance(data, FileHash):
            return pb.EdgeMessage(
                request_id=request_id,
                file_hash_request=pb.FileHashRequest(catalog_uuid=data.catalog_uuid, hash_types=list(data.hash_types)),
            )
        if isinstance(data, FileRemap):
            return pb.EdgeMessage(
                request_id=request_id,
                file_remap_request=pb.FileRemapRequest(
                    old_catalog_uuid=data.old_catalog_uuid, new_catalog_uuid=data.new_catalog_uuid
                ),
            )
        if isinstance(data, ScreenshotCapture):
            return pb.EdgeMessage(
                request_id=request_id,
                screenshot_capture_request=pb.ScreenshotCaptureRequest(
                    catalog_uuid=data.catalog_uuid,
                    quantity=data.quantity,
                    upload_token=data.upload_token,
                    upload_endpoint=data.upload_endpoint,
                    request_id=request_id,
                ),
            )
        if isinstance(data, BatchFileOfferResponse):
            return pb.EdgeMessage(
                request_id=request_id,
                batch_file_offer_response=pb.BatchFileOfferResponse(
                    files=[pb.FileOfferResult(peer_luid=f.peer_luid, catalog_uuid=f.catalog_uuid) for f in data.files]
                ),
            )
    except (TypeError, ValueError) as error:
        raise _Invalid(Reason.INVALID_COMMAND, f"command cannot be encoded for the peer: {error}"[:300]) from None
    raise AssertionError(f"no EdgeMessage for {command_type}")  # COMMAND_TYPES and this function disagree


# Dead letters ----------------------------------------------------------------------------------


def undeliverable(command: Command, reason: Reason, detail: str, attempts: int) -> DeadLetter:
    """The dead letter for a valid command that could not be delivered."""
    return DeadLetter(
        reason, detail, command.source, command.original, attempts, command.peer_id, command.request_id
    )


def dead_letter_value(letter: DeadLetter, *, edge_id: str, now: datetime.datetime) -> dict[str, Any]:
    """The dead-letter JSON of docs/protocol.md#dead-letters."""
    value: dict[str, Any] = {
        "original_message": letter.original,
        "reason": letter.reason.value,
        "detail": letter.detail,
        "attempts": letter.attempts,
        "topic": letter.source.topic,
        "partition": letter.source.partition,
        "offset": letter.source.offset,
        "peer_id": letter.peer_id,
        "edge_id": edge_id,
        "timestamp": timestamp(now),
    }
    if letter.request_id:
        value["request_id"] = letter.request_id
    return value


def dead_letter_record(
    letter: DeadLetter,
    *,
    edge_id: str,
    topic: str,
    now: datetime.datetime,
    on_ack: Callable[[], None] | None = None,
) -> OutboundRecord:
    """The record to produce for `letter`, keyed by its peer (no key when the peer is unknown).

    Whatever the original was, the record can be encoded and fits under Kafka's default record size:
    an original with text UTF-8 cannot carry (an unpaired surrogate escape) goes as ASCII-escaped JSON
    text, and one too large is cut to ORIGINAL_TRUNCATED_CHARS with `original_truncated: true`.
    """
    value = dead_letter_value(letter, edge_id=edge_id, now=now)
    try:
        size = len(_encode(value))
    except UnicodeEncodeError:
        value["original_message"] = json.dumps(letter.original, ensure_ascii=True)
        size = len(_encode(value))
    if size > DEAD_LETTER_MAX_BYTES:
        original = value["original_message"]
        text = original if isinstance(original, str) else json.dumps(original, ensure_ascii=True)
        value["original_message"] = text[:ORIGINAL_TRUNCATED_CHARS]
        value["original_truncated"] = True
        value["original_size_chars"] = len(text)
    return OutboundRecord(topic, letter.peer_id, value, on_ack=on_ack)


def _encode(value: Mapping[str, Any]) -> bytes:
    return OutboundRecord("", None, value).encode_value()
