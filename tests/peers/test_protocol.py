"""What each peer message becomes: the Kafka record's topic, key and every JSON field
(docs/protocol.md#messages and #kafka-contract).

Pure functions, no event loop: these tests are the table of the peer half of the Kafka contract.
"""

from __future__ import annotations

import base64
import datetime

import pytest

from edge.config import Settings, settings_for_tests
from edge.grpc import StatusCode
from edge.peers import protocol
from edge.peers.protocol import PeerProtocolError, SessionInfo
from edge.proto import pb
from edge.records import DisconnectReason

NOW = datetime.datetime(2026, 11, 27, 12, 30, 5, 123000, tzinfo=datetime.timezone.utc)
STAMP = "2026-11-27T12:30:05.123Z"
SETTINGS: Settings = settings_for_tests(edge_id="edge-7", screenshot_max_bytes=16)
INFO = SessionInfo(edge_id="edge-7", peer_id="peer-1", session_id="s-1", epoch=4)
BASE = {"peer_id": "peer-1", "edge_id": "edge-7", "timestamp": STAMP}


def records_of(message: pb.PeerMessage, settings: Settings = SETTINGS):
    return protocol.records_for_message(message, INFO, settings, NOW)


def record_of(message: pb.PeerMessage, settings: Settings = SETTINGS):
    """The one record `message` becomes (None if it becomes none)."""
    records = records_of(message, settings)
    assert len(records) <= 1
    return records[0] if records else None


CASES = {
    "file_delete_response": (
        pb.PeerMessage(
            request_id="r1",
            file_delete_response=pb.FileDeleteResponse(catalog_uuid="c1", success=False, error_message="busy"),
        ),
        "file-delete-responses",
        {"request_id": "r1", "catalog_uuid": "c1", "success": False, "error_message": "busy"},
    ),
    "file_hash_response": (
        pb.PeerMessage(
            request_id="r2",
            file_hash_response=pb.FileHashResponse(catalog_uuid="c2", hashes={"sha256": "ab", "md5": "cd"}),
        ),
        "file-hash-responses",
        {"request_id": "r2", "catalog_uuid": "c2", "hashes": {"sha256": "ab", "md5": "cd"}, "error_message": ""},
    ),
    "file_remap_response": (
        pb.PeerMessage(
            request_id="r3", file_remap_response=pb.FileRemapResponse(new_catalog_uuid="n1", success=True)
        ),
        "file-remap-responses",
        {"request_id": "r3", "new_catalog_uuid": "n1", "success": True, "error_message": ""},
    ),
    "batch_file_offer_request": (
        pb.PeerMessage(
            request_id="r4",
            batch_file_offer_request=pb.BatchFileOfferRequest(
                files=[
                    pb.FileOfferItem(peer_luid="l1", relative_path="a/b.mkv", size_bytes=2**40),
                    pb.FileOfferItem(peer_luid="l2", relative_path="c.mp4", size_bytes=7),
                ],
                category_type="movie",
            ),
        ),
        "peer-catalog-updates",
        {
            "request_id": "r4",
            "update_type": "file_offer",
            "files": [
                {"peer_luid": "l1", "relative_path": "a/b.mkv", "size_bytes": 2**40},
                {"peer_luid": "l2", "relative_path": "c.mp4", "size_bytes": 7},
            ],
            "category_type": "movie",
            "is_full_update": False,
            "part": 1,
            "parts": 1,
        },
    ),
    "screenshot_capture_response": (
        pb.PeerMessage(
            request_id="r5",
            screenshot_capture_response=pb.ScreenshotCaptureResponse(
                catalog_uuid="c5", screenshot=pb.ScreenshotData(frame_number_in_video=42, screenshot=b"\x89PNG")
            ),
        ),
        "screenshot-capture-responses",
        {
            "request_id": "r5",
            "catalog_uuid": "c5",
            "screenshot": {"frame_number_in_video": 42, "screenshot": base64.b64encode(b"\x89PNG").decode()},
        },
    ),
    "screenshot_capture_error": (
        pb.PeerMessage(
            request_id="r6",
            screenshot_capture_response=pb.ScreenshotCaptureResponse(catalog_uuid="c6", error_message="no video"),
        ),
        "screenshot-capture-responses",
        {"request_id": "r6", "catalog_uuid": "c6", "error_message": "no video"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peer_message_becomes_its_record(case):
    message, topic, fields = CASES[case]
    record = record_of(message)
    assert record is not None
    assert record.topic == topic
    assert record.key == "peer-1"
    assert dict(record.value) == {**BASE, **fields}


def test_oversized_screenshot_becomes_an_error_record_not_a_drop():
    big = pb.PeerMessage(
        request_id="r7",
        screenshot_capture_response=pb.ScreenshotCaptureResponse(
            catalog_uuid="c7", screenshot=pb.ScreenshotData(frame_number_in_video=1, screenshot=b"x" * 17)
        ),
    )
    record = record_of(big)
    assert record is not None and record.topic == "screenshot-capture-responses"
    assert "screenshot" not in record.value
    assert record.value["screenshot_size_bytes"] == 17
    assert "SCREENSHOT_MAX_BYTES" in record.value["error_message"]


def test_screenshot_exactly_at_the_limit_is_forwarded():
    message = pb.PeerMessage(
        screenshot_capture_response=pb.ScreenshotCaptureResponse(
            catalog_uuid="c", screenshot=pb.ScreenshotData(screenshot=b"y" * 16)
        )
    )
    record = record_of(message)
    assert base64.b64decode(record.value["screenshot"]["screenshot"]) == b"y" * 16


def test_heartbeat_and_unknown_kinds_produce_no_record():
    assert records_of(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1))) == ()
    # A payload from a newer peer: field 99 is unknown to this schema.
    unknown = pb.PeerMessage.FromString(pb.PeerMessage(request_id="x").SerializeToString() + b"\x9a\x06\x00")
    assert unknown.WhichOneof("payload") is None
    assert records_of(unknown) == ()


def test_second_registration_is_a_protocol_error():
    again = pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="peer-1"))
    with pytest.raises(PeerProtocolError) as caught:
        record_of(again)
    assert caught.value.code == StatusCode.INVALID_ARGUMENT


def test_request_id_is_omitted_when_the_peer_sent_none():
    record = record_of(pb.PeerMessage(file_remap_response=pb.FileRemapResponse(new_catalog_uuid="n")))
    assert "request_id" not in record.value


def test_lifecycle_records():
    connected = protocol.connected_record(INFO, SETTINGS, NOW)
    assert connected.topic == "peer-lifecycle-events" and connected.key == "peer-1"
    assert dict(connected.value) == {**BASE, "event_type": "connected", "session_id": "s-1", "epoch": 4}
    for reason in DisconnectReason:
        gone = protocol.disconnected_record(INFO, reason, SETTINGS, NOW)
        assert dict(gone.value) == {
            **BASE,
            "event_type": "disconnected",
            "session_id": "s-1",
            "epoch": 4,
            "reason": reason.value,
        }


def test_full_catalog_record():
    registration = protocol.Registration(peer_id="peer-1", catalog_uuids=("a", "b"), request_id="reg-1")
    [record] = protocol.full_catalog_records(registration, INFO, SETTINGS, NOW)
    assert record.topic == "peer-catalog-updates" and record.key == "peer-1"
    assert dict(record.value) == {
        **BASE,
        "request_id": "reg-1",
        "update_type": "full",
        "catalog_ids": ["a", "b"],
        "is_full_update": True,
        "session_id": "s-1",
        "part": 1,
        "parts": 1,
    }


def test_record_values_are_json_with_int64_as_numbers():
    message, _, _ = CASES["batch_file_offer_request"]
    encoded = record_of(message).encode_value()
    assert b'"size_bytes":1099511627776' in encoded


@pytest.mark.parametrize(
    "peer_id, ok",
    [
        ("a", True),
        ("x" * 128, True),
        ("peer.1_a-b:c@d", True),
        ("", False),
        ("x" * 129, False),
        ("has space", False),
        ("ümlaut", False),
        ("slash/", False),
    ],
)
def test_registration_peer_id_rules(peer_id, ok):
    message = pb.PeerMessage(
        request_id="q", registration_request=pb.PeerRegistrationRequest(peer_name=peer_id, catalog_uuids=["c"])
    )
    if ok:
        registration = protocol.parse_registration(message, SETTINGS)
        assert registration == protocol.Registration(peer_id=peer_id, catalog_uuids=("c",), request_id="q")
    else:
        with pytest.raises(PeerProtocolError) as caught:
            protocol.parse_registration(message, SETTINGS)
        assert caught.value.code == StatusCode.INVALID_ARGUMENT


def test_first_message_must_be_a_registration():
    with pytest.raises(PeerProtocolError, match="first message must be a registration_request, got heartbeat"):
        protocol.parse_registration(pb.PeerMessage(heartbeat=pb.Heartbeat()), SETTINGS)
    with pytest.raises(PeerProtocolError, match="unknown or empty payload"):
        protocol.parse_registration(pb.PeerMessage(), SETTINGS)


def test_catalog_over_the_limit_is_refused():
    message = pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="p", catalog_uuids=["a"] * 3))
    with pytest.raises(PeerProtocolError, match="more than 2") as caught:
        protocol.parse_registration(message, settings_for_tests(max_catalog_size=2))
    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED


def test_undecodable_bytes_are_a_protocol_error():
    with pytest.raises(PeerProtocolError, match="not a valid PeerMessage"):
        protocol.decode_peer_message(b"\xff\xff\xff\xff")


def test_registration_responses():
    registration = protocol.Registration(peer_id="peer-1", catalog_uuids=(), request_id="reg-9")
    accepted = protocol.registration_accepted(registration, INFO, SETTINGS).registration_response
    assert accepted.success and accepted.peer_name == "peer-1" and accepted.edge_name == "edge-7"
    assert accepted.heartbeat_interval_sec == 30 and accepted.peer_timeout_sec == 120
    assert accepted.session_id == "s-1"
    refused = protocol.registration_refused("nope", "edge-7")
    assert not refused.registration_response.success
    assert refused.registration_response.error_message == "nope"
    assert refused.registration_response.edge_name == "edge-7"


def test_a_refusal_echoes_only_bounded_parts_of_the_first_message():
    first = pb.PeerMessage(
        request_id="r" * 5000, registration_request=pb.PeerRegistrationRequest(peer_name="p" * 5000)
    )
    refused = protocol.registration_refused("bad id", "edge-7", **protocol.echo_of(first))
    assert refused.request_id == "r" * protocol.ERROR_TEXT_CHARS
    assert refused.registration_response.peer_name == "p" * 128
    assert protocol.echo_of(pb.PeerMessage(request_id="x", heartbeat=pb.Heartbeat())) == {"request_id": "x"}
    assert protocol.echo_of(None) == {}


# Record size (KAFKA_MAX_RECORD_BYTES) ----------------------------------------------------------------

SMALL = settings_for_tests(edge_id="edge-7", kafka_max_record_bytes=4096)


def test_a_catalog_over_the_record_limit_is_split_into_numbered_parts_in_order():
    """Every part fits, parts are numbered 1..n, share request_id and session_id, and their ids
    concatenated are the catalog in order."""
    ids = tuple(f"{n:08d}-0000-4000-8000-{n:012d}" for n in range(500))  # ~20 KB of JSON
    registration = protocol.Registration(peer_id="peer-1", catalog_uuids=ids, request_id="reg-1")
    records = protocol.full_catalog_records(registration, INFO, SMALL, NOW)
    assert len(records) > 4
    assert all(len(r.encode_value()) <= 4096 for r in records)
    assert [r.value["part"] for r in records] == list(range(1, len(records) + 1))
    assert {r.value["parts"] for r in records} == {len(records)}
    assert {(r.value["request_id"], r.value["session_id"], r.value["update_type"]) for r in records} == {
        ("reg-1", "s-1", "full")
    }
    assert all(r.value["is_full_update"] is True and r.key == "peer-1" for r in records)
    assert tuple(i for r in records for i in r.value["catalog_ids"]) == ids
    # Parts are well filled: no more than one part beyond what the bytes need.
    assert len(records) <= sum(len(r.encode_value()) for r in records) // 4096 + 2


def test_a_file_offer_over_the_record_limit_is_split():
    files = [pb.FileOfferItem(peer_luid=f"l{n}", relative_path="é/" * 40, size_bytes=n) for n in range(100)]
    message = pb.PeerMessage(
        request_id="offer-1", batch_file_offer_request=pb.BatchFileOfferRequest(files=files, category_type="tv")
    )
    records = records_of(message, SMALL)
    assert len(records) > 1 and all(len(r.encode_value()) <= 4096 for r in records)
    assert [f["peer_luid"] for r in records for f in r.value["files"]] == [f"l{n}" for n in range(100)]
    assert all(r.value["update_type"] == "file_offer" and r.value["category_type"] == "tv" for r in records)
    assert [(r.value["part"], r.value["parts"]) for r in records] == [(n, len(records)) for n in range(1, len(records) + 1)]


def test_a_file_offer_item_too_large_for_any_record_is_a_protocol_error():
    message = pb.PeerMessage(
        batch_file_offer_request=pb.BatchFileOfferRequest(files=[pb.FileOfferItem(relative_path="x" * 5000)])
    )
    with pytest.raises(PeerProtocolError, match="cannot be published") as caught:
        records_of(message, SMALL)
    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "message, kept",
    [
        (
            pb.PeerMessage(
                request_id="r" * 300,
                file_hash_response=pb.FileHashResponse(catalog_uuid="c" * 9, hashes={"sha256": "h" * 5000}),
            ),
            {"catalog_uuid": "c" * 9, "hashes": {}},
        ),
        (
            pb.PeerMessage(
                request_id="d",
                file_delete_response=pb.FileDeleteResponse(catalog_uuid="c", success=True, error_message="e" * 9000),
            ),
            {"catalog_uuid": "c", "success": False},
        ),
        (
            pb.PeerMessage(
                request_id="m",
                file_remap_response=pb.FileRemapResponse(new_catalog_uuid="\x01" * 5000, success=True),
            ),
            {"new_catalog_uuid": "\x01" * protocol.ERROR_TEXT_CHARS, "success": False},
        ),
    ],
    ids=["hash", "delete", "remap"],
)
def test_a_response_over_the_record_limit_becomes_an_error_record(message, kept):
    """Same topic, same kind of fields (emptied or cut), success false, a precise error_message."""
    [record] = records_of(message, SMALL)
    value = dict(record.value)
    assert len(record.encode_value()) <= 4096
    assert value["request_id"] == message.request_id[: protocol.ERROR_TEXT_CHARS]
    assert {k: value[k] for k in kept} == kept
    assert "KAFKA_MAX_RECORD_BYTES" in value["error_message"] and "4096" in value["error_message"]
    assert value["record_size_bytes"] > 4096


def test_a_screenshot_over_the_record_limit_becomes_an_error_record():
    """SCREENSHOT_MAX_BYTES above what a record can carry: the record bound still holds."""
    settings = settings_for_tests(edge_id="edge-7", kafka_max_record_bytes=4096, screenshot_max_bytes=10_000)
    message = pb.PeerMessage(
        request_id="s",
        screenshot_capture_response=pb.ScreenshotCaptureResponse(
            catalog_uuid="c", screenshot=pb.ScreenshotData(frame_number_in_video=3, screenshot=b"p" * 9000)
        ),
    )
    [record] = records_of(message, settings)
    assert "screenshot" not in record.value
    assert record.value["catalog_uuid"] == "c" and record.value["record_size_bytes"] > 12000
    assert len(record.encode_value()) <= 4096


def test_the_worst_error_record_fits_the_smallest_limit():
    """Longest peer id and edge id, every peer string at its cut length and all control characters
    (6 bytes each in JSON): the error record still fits KAFKA_MAX_RECORD_BYTES' lowest value."""
    info = SessionInfo(edge_id="e" * 64, peer_id="p" * 128, session_id="s", epoch=1)
    worst = "\x01" * 10_000
    for message in (
        pb.PeerMessage(request_id=worst, file_hash_response=pb.FileHashResponse(catalog_uuid=worst)),
        pb.PeerMessage(request_id=worst, file_delete_response=pb.FileDeleteResponse(catalog_uuid=worst)),
        pb.PeerMessage(request_id=worst, file_remap_response=pb.FileRemapResponse(new_catalog_uuid=worst)),
        pb.PeerMessage(request_id=worst, screenshot_capture_response=pb.ScreenshotCaptureResponse(catalog_uuid=worst, error_message=worst)),
    ):
        [record] = protocol.records_for_message(message, info, SMALL, NOW)
        assert len(record.encode_value()) <= 4096


def test_a_catalog_id_too_long_for_any_record_is_refused_at_registration():
    ok = pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="p", catalog_uuids=["a" * 500]))
    assert protocol.parse_registration(ok, SMALL).catalog_uuids == ("a" * 500,)
    too_long = pb.PeerMessage(
        registration_request=pb.PeerRegistrationRequest(peer_name="p", catalog_uuids=["a", "b" * 1000])
    )
    with pytest.raises(PeerProtocolError, match="too long to publish") as caught:
        protocol.parse_registration(too_long, SMALL)
    assert caught.value.code == StatusCode.RESOURCE_EXHAUSTED
    long_request_id = pb.PeerMessage(request_id="r" * 1000, registration_request=pb.PeerRegistrationRequest(peer_name="p"))
    with pytest.raises(PeerProtocolError, match="too long to publish"):
        protocol.parse_registration(long_request_id, SMALL)


def test_every_admitted_catalog_can_be_published():
    """What parse_registration admits, full_catalog_records can always cut into parts within the limit
    (its bound is conservative: ids of control characters take 6 bytes per character)."""
    for length in (1, 50, 200, 500, 560):
        ids = ["\x02" * length] * 20
        message = pb.PeerMessage(request_id="\x03" * 20, registration_request=pb.PeerRegistrationRequest(peer_name="p" * 128, catalog_uuids=ids))
        try:
            registration = protocol.parse_registration(message, SMALL)
        except PeerProtocolError:
            assert length > 500
            continue
        info = SessionInfo(edge_id="edge-7", peer_id="p" * 128, session_id="0" * 36, epoch=10**18)
        records = protocol.full_catalog_records(registration, info, SMALL, NOW)
        assert all(len(r.encode_value()) <= 4096 for r in records)
        assert [i for r in records for i in r.value["catalog_ids"]] == ids
