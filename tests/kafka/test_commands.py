"""Command parsing, EdgeMessage building and dead-letter JSON: pure functions, no loop, no broker."""

from __future__ import annotations

import datetime
import json

import pytest

from edge.kafka.commands import (
    DEAD_LETTER_MAX_BYTES,
    Command,
    CommandParser,
    DeadLetter,
    Reason,
    Source,
    dead_letter_record,
    undeliverable,
)
from edge.proto import pb

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
SOURCE = Source("edge-commands-e1", 2, 41)


def parser(**overrides) -> CommandParser:
    return CommandParser(max_message_bytes=overrides.pop("max_message_bytes", 4 * 1024 * 1024), new_request_id=lambda: "generated-1", **overrides)


def parse(document, **overrides):
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parser(**overrides).parse(raw, SOURCE, NOW)


def command(command_type, data, **extra):
    return {"peer_id": "peer-1", "command_type": command_type, "command_data": data, **extra}


EXPECTED_MESSAGES = {
    "file_delete": (
        {"catalog_uuids": ["c1", "c2"]},
        pb.EdgeMessage(request_id="r-1", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["c1", "c2"])),
    ),
    "file_hash": (
        {"catalog_uuid": "c1", "hash_types": ["sha256", "md5"]},
        pb.EdgeMessage(
            request_id="r-1", file_hash_request=pb.FileHashRequest(catalog_uuid="c1", hash_types=["sha256", "md5"])
        ),
    ),
    "file_remap": (
        {"old_catalog_uuid": "a", "new_catalog_uuid": "b"},
        pb.EdgeMessage(request_id="r-1", file_remap_request=pb.FileRemapRequest(old_catalog_uuid="a", new_catalog_uuid="b")),
    ),
    "screenshot_capture": (
        {"catalog_uuid": "c1", "quantity": 3, "upload_token": "tok", "upload_endpoint": "https://up/1"},
        pb.EdgeMessage(
            request_id="r-1",
            screenshot_capture_request=pb.ScreenshotCaptureRequest(
                catalog_uuid="c1", quantity=3, upload_token="tok", upload_endpoint="https://up/1", request_id="r-1"
            ),
        ),
    ),
    "batch_file_offer_response": (
        {"files": [{"peer_luid": "l1", "catalog_uuid": "c1"}, {"peer_luid": "l2", "catalog_uuid": "c2"}]},
        pb.EdgeMessage(
            request_id="r-1",
            batch_file_offer_response=pb.BatchFileOfferResponse(
                files=[pb.FileOfferResult(peer_luid="l1", catalog_uuid="c1"), pb.FileOfferResult(peer_luid="l2", catalog_uuid="c2")]
            ),
        ),
    ),
}


@pytest.mark.parametrize("command_type", sorted(EXPECTED_MESSAGES))
def test_each_command_type_becomes_its_edge_message(command_type):
    """Every command_type of docs/protocol.md#commands becomes the EdgeMessage of docs/protocol.md#messages
    with its request_id."""
    data, expected = EXPECTED_MESSAGES[command_type]
    result = parse(command(command_type, data, request_id="r-1"))
    assert isinstance(result, Command)
    assert result.message == expected
    assert (result.peer_id, result.request_id, result.source) == ("peer-1", "r-1", SOURCE)


def test_missing_request_id_is_generated_and_extra_keys_are_ignored():
    """A missing, null or empty request_id is generated; unknown keys (a newer backend) are fine."""
    for extra in ({}, {"request_id": None}, {"request_id": ""}):
        result = parse(command("file_remap", {"old_catalog_uuid": "a", "new_catalog_uuid": "b", "why": "x"}, trace="t", **extra))
        assert isinstance(result, Command)
        assert result.request_id == "generated-1" and result.message.request_id == "generated-1"


def test_expires_at_in_the_future_is_kept():
    result = parse(command("file_delete", {"catalog_uuids": []}, expires_at="2026-03-01T12:05:00Z"))
    assert isinstance(result, Command)
    assert result.expires_at == NOW + datetime.timedelta(minutes=5)


INVALID = [
    # (value, reason, detail fragment, original_message, peer_id)
    (b"{not json", Reason.INVALID_JSON, "not JSON", "{not json", None),
    (b"\xff\xfe", Reason.INVALID_JSON, "not UTF-8", "\\xff\\xfe", None),
    (b"[1, 2]", Reason.INVALID_COMMAND, "JSON object, got an array", [1, 2], None),
    (b'"text"', Reason.INVALID_COMMAND, "JSON object, got a string", "text", None),
    ({"command_type": "file_delete", "command_data": {}}, Reason.INVALID_COMMAND, "peer_id is missing", None, None),
    ({"peer_id": 7, "command_type": "file_delete"}, Reason.INVALID_COMMAND, "peer_id is a number", None, None),
    ({"peer_id": "bad id!", "command_type": "file_delete"}, Reason.INVALID_COMMAND, "peer_id must be", None, None),
    ({"peer_id": "p", "command_data": {}}, Reason.INVALID_COMMAND, "command_type is missing", None, "p"),
    ({"peer_id": "p", "command_type": "reboot", "command_data": {}}, Reason.UNKNOWN_COMMAND_TYPE, "'reboot' is not one of", None, "p"),
    ({"peer_id": "p", "command_type": "file_delete"}, Reason.INVALID_COMMAND, "command_data is missing", None, "p"),
    ({"peer_id": "p", "command_type": "file_delete", "command_data": []}, Reason.INVALID_COMMAND, "must be an object", None, "p"),
    (
        {"peer_id": "p", "command_type": "file_delete", "command_data": {"catalog_uuids": "abc"}},
        Reason.INVALID_COMMAND,
        "expected an array, got str @ command_data.catalog_uuids",
        None,
        "p",
    ),
    (
        {"peer_id": "p", "command_type": "screenshot_capture", "command_data": {"catalog_uuid": "c", "quantity": "3", "upload_token": "t", "upload_endpoint": "e"}},
        Reason.INVALID_COMMAND,
        "expected an integer, got str @ command_data.quantity",
        None,
        "p",
    ),
    (
        {"peer_id": "p", "command_type": "screenshot_capture", "command_data": {"catalog_uuid": "c", "quantity": 0, "upload_token": "t", "upload_endpoint": "e"}},
        Reason.INVALID_COMMAND,
        "quantity must be from 1 to 2147483647",
        None,
        "p",
    ),
    (
        {"peer_id": "p", "command_type": "batch_file_offer_response", "command_data": {"files": [{"peer_luid": "l"}]}},
        Reason.INVALID_COMMAND,
        "required field missing @ command_data.files[0].catalog_uuid",
        None,
        "p",
    ),
    ({"peer_id": "p", "command_type": "file_delete", "command_data": {"catalog_uuids": []}, "request_id": 5}, Reason.INVALID_COMMAND, "request_id must be a string", None, "p"),
    ({"peer_id": "p", "command_type": "file_delete", "command_data": {"catalog_uuids": []}, "expires_at": "soon"}, Reason.INVALID_COMMAND, "not an ISO-8601 time", None, "p"),
    ({"peer_id": "p", "command_type": "file_delete", "command_data": {"catalog_uuids": []}, "expires_at": "2026-03-01T11:59:59Z"}, Reason.EXPIRED, "expired at 2026-03-01T11:59:59.000Z", None, "p"),
]


@pytest.mark.parametrize(("value", "reason", "fragment", "original", "peer_id"), INVALID)
def test_bad_records_become_dead_letters_with_a_reason(value, reason, fragment, original, peer_id):
    """Each way a record can be wrong has its reason code and a detail that says what is wrong."""
    result = parse(value)
    assert isinstance(result, DeadLetter)
    assert result.reason is reason
    assert fragment in result.detail
    assert result.attempts == 0 and result.source == SOURCE
    assert result.original == (original if original is not None else value)
    assert result.peer_id == peer_id


def test_tombstone_and_oversized_command():
    """A record without a value is invalid_json; a command too big for a gRPC message is invalid."""
    tombstone = parser().parse(None, SOURCE, NOW)
    assert isinstance(tombstone, DeadLetter) and tombstone.reason is Reason.INVALID_JSON
    big = parse(command("file_delete", {"catalog_uuids": ["x" * 100] * 20}), max_message_bytes=1000)
    assert isinstance(big, DeadLetter) and big.reason is Reason.INVALID_COMMAND
    assert "over GRPC_MAX_MESSAGE_BYTES (1000)" in big.detail


def test_text_protobuf_cannot_carry_is_invalid():
    """An unpaired surrogate (legal as a JSON escape, not as UTF-8) is refused, not crashed on."""
    result = parse(b'{"peer_id": "p", "command_type": "file_hash", "command_data": {"catalog_uuid": "\\ud800", "hash_types": []}}')
    assert isinstance(result, DeadLetter) and result.reason is Reason.INVALID_COMMAND
    record = dead_letter_record(result, edge_id="e1", topic="dl", now=NOW)
    assert json.loads(record.encode_value())["original_message"] == (
        '{"peer_id": "p", "command_type": "file_hash", "command_data": {"catalog_uuid": "\\ud800", "hash_types": []}}'
    )


def test_dead_letter_json_has_every_field_of_the_spec():
    """original_message, reason, detail, attempts, topic/partition/offset, peer_id, edge_id, timestamp,
    request_id; keyed by the peer."""
    result = parse(command("file_delete", {"catalog_uuids": ["c"]}, request_id="r-9"))
    assert isinstance(result, Command)
    letter = undeliverable(result, Reason.PEER_NOT_CONNECTED, "peer peer-1 is not connected", 4)
    acked = []
    record = dead_letter_record(letter, edge_id="e1", topic="edge-commands-e1.deadletter", now=NOW, on_ack=lambda: acked.append(1))
    assert record.topic == "edge-commands-e1.deadletter" and record.key == "peer-1"
    assert json.loads(record.encode_value()) == {
        "original_message": {"peer_id": "peer-1", "command_type": "file_delete", "command_data": {"catalog_uuids": ["c"]}, "request_id": "r-9"},
        "reason": "peer_not_connected",
        "detail": "peer peer-1 is not connected",
        "attempts": 4,
        "topic": "edge-commands-e1",
        "partition": 2,
        "offset": 41,
        "peer_id": "peer-1",
        "edge_id": "e1",
        "timestamp": "2026-03-01T12:00:00.000Z",
        "request_id": "r-9",
    }
    record.on_ack()
    assert acked == [1]


def test_dead_letter_of_unknown_peer_has_no_key_and_huge_originals_are_cut():
    letter = parser().parse(b"x" * (DEAD_LETTER_MAX_BYTES + 10), SOURCE, NOW)
    record = dead_letter_record(letter, edge_id="e1", topic="dl", now=NOW)
    value = json.loads(record.encode_value())
    assert record.key is None and value["peer_id"] is None and "request_id" not in value
    assert value["original_truncated"] is True and value["original_size_chars"] == DEAD_LETTER_MAX_BYTES + 10
    assert len(record.encode_value()) < DEAD_LETTER_MAX_BYTES
