"""What each peer message becomes: the Kafka record's topic, key and every JSON field (SPEC 2 and 3).

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


def record_of(message: pb.PeerMessage):
    return protocol.record_for_message(message, INFO, SETTINGS, NOW)


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
    assert record_of(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1))) is None
    # A payload from a newer peer: field 99 is unknown to this schema.
    unknown = pb.PeerMessage.FromString(pb.PeerMessage(request_id="x").SerializeToString() + b"\x9a\x06\x00")
    assert unknown.WhichOneof("payload") is None
    assert record_of(unknown) is None


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
    record = protocol.full_catalog_record(registration, INFO, SETTINGS, NOW)
    assert record.topic == "peer-catalog-updates" and record.key == "peer-1"
    assert dict(record.value) == {
        **BASE,
        "request_id": "reg-1",
        "update_type": "full",
        "catalog_ids": ["a", "b"],
        "is_full_update": True,
        "session_id": "s-1",
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
        registration = protocol.parse_registration(message, max_catalog_size=10)
        assert registration == protocol.Registration(peer_id=peer_id, catalog_uuids=("c",), request_id="q")
    else:
        with pytest.raises(PeerProtocolError) as caught:
            protocol.parse_registration(message, max_catalog_size=10)
        assert caught.value.code == StatusCode.INVALID_ARGUMENT


def test_first_message_must_be_a_registration():
    with pytest.raises(PeerProtocolError, match="first message must be a registration_request, got heartbeat"):
        protocol.parse_registration(pb.PeerMessage(heartbeat=pb.Heartbeat()), max_catalog_size=10)
    with pytest.raises(PeerProtocolError, match="unknown or empty payload"):
        protocol.parse_registration(pb.PeerMessage(), max_catalog_size=10)


def test_catalog_over_the_limit_is_refused():
    message = pb.PeerMessage(registration_request=pb.PeerRegistrationRequest(peer_name="p", catalog_uuids=["a"] * 3))
    with pytest.raises(PeerProtocolError, match="more than 2"):
        protocol.parse_registration(message, max_catalog_size=2)


def test_undecodable_bytes_are_a_protocol_error():
    with pytest.raises(PeerProtocolError, match="not a valid PeerMessage"):
        protocol.decode_peer_message(b"\xff\xff\xff\xff")


def test_registration_responses():
    registration = protocol.Registration(peer_id="peer-1", catalog_uuids=(), request_id="reg-9")
    accepted = protocol.registration_accepted(registration, INFO, SETTINGS).registration_response
    assert accepted.success and accepted.peer_name == "peer-1" and accepted.edge_name == "edge-7"
    assert accepted.heartbeat_interval_sec == 30 and accepted.peer_timeout_sec == 120
    assert accepted.session_id == "s-1"
    refused = protocol.registration_refused(None, "nope", "edge-7")
    assert not refused.registration_response.success
    assert refused.registration_response.error_message == "nope"
