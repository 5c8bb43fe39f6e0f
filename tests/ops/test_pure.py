"""Pure pieces of the operations code, tested without a loop: HTTP routing, health statuses,
reflection answers, what a simulated peer answers, command building, tail's rendering."""

from __future__ import annotations

import datetime
import json

import pytest
from google.protobuf import descriptor_pb2

from edge.ops.health import NOT_SERVING, SERVING, serving_status
from edge.ops.http import respond
from edge.ops.reflection import edge_reflection_index
from edge.ops.runtime import EdgeRuntime
from edge.proto import ops as ops_pb
from edge.proto import pb
from edge.kafka.tools import TailRecord
from edge.tools.peer_sim import answers_for, tiny_png
from edge.tools.sim_report import latency_percentiles, merge_snapshots
from edge.tools.send_command import CommandError, build_command
from edge.tools.tail import failure_lines, format_record, leaves, record_json, resolve_topics
from edge.config import load_settings


# --- HTTP -----------------------------------------------------------------------------------------


def test_http_routes():
    runtime = EdgeRuntime.create("e")
    assert respond(b"GET", b"/healthz", runtime).status == 200
    not_ready = respond(b"GET", b"/readyz?verbose=1", runtime)
    assert not_ready.status == 503 and json.loads(not_ready.body)["ready"] is False
    runtime.health.kafka.consumer_enabled = False
    runtime.health.kafka.set_producer(True)
    runtime.health.set_accepting(True)
    assert respond(b"HEAD", b"/readyz", runtime).status == 200
    metrics = respond(b"GET", b"/metrics", runtime)
    assert metrics.status == 200 and metrics.content_type == b"text/plain; version=0.0.4; charset=utf-8"
    assert b"giggityflix_edge_ready 1.0" in metrics.body
    assert respond(b"GET", b"/", runtime).status == 404
    refused = respond(b"POST", b"/metrics", runtime)
    assert refused.status == 405 and (b"allow", b"GET, HEAD") in refused.extra_headers


# --- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "ready", "expected"),
    [
        ("", True, SERVING),
        ("", False, NOT_SERVING),
        ("giggityflix.edge.v1.PeerEdgeService", True, SERVING),
        ("giggityflix.edge.v1.PeerEdgeService", False, NOT_SERVING),
        ("something.Else", True, None),
    ],
)
def test_serving_status(service, ready, expected):
    assert serving_status(service, ready) == expected


# --- reflection -----------------------------------------------------------------------------------


def test_reflection_answers_each_kind_of_request():
    index = edge_reflection_index()
    v1 = ops_pb.reflection_v1
    listed = index.answer(v1.ServerReflectionRequest(host="h", list_services=""), v1)
    assert listed.valid_host == "h" and listed.original_request.list_services == ""
    assert [s.name for s in listed.list_services_response.service] == [
        "giggityflix.edge.v1.PeerEdgeService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    ]
    for symbol in (
        "giggityflix.edge.v1.PeerEdgeService",
        "giggityflix.edge.v1.PeerEdgeService.Connect",
        "giggityflix.edge.v1.ScreenshotData",
        "giggityflix.edge.v1.PeerRegistrationRequest.peer_name",
    ):
        found = index.answer(v1.ServerReflectionRequest(file_containing_symbol=symbol), v1)
        [blob] = found.file_descriptor_response.file_descriptor_proto
        assert descriptor_pb2.FileDescriptorProto.FromString(blob).name == "giggityflix/edge/v1/peer_edge.proto"
    health = index.answer(v1.ServerReflectionRequest(file_by_filename="grpc/health/v1/health.proto"), v1)
    assert len(health.file_descriptor_response.file_descriptor_proto) == 1
    missing = index.answer(v1.ServerReflectionRequest(file_containing_symbol="grpc_health.NotOurs"), v1)
    assert missing.error_response.error_code == 5  # NOT_FOUND
    extension = index.answer(v1.ServerReflectionRequest(all_extension_numbers_of_type="x.Y"), v1)
    assert extension.error_response.error_code == 5


# --- peer-sim -------------------------------------------------------------------------------------


def test_a_simulated_peer_answers_like_a_peer():
    delete = answers_for(pb.EdgeMessage(request_id="r1", file_delete_request=pb.FileDeleteRequest(catalog_uuids=["a", "b"])))
    assert [(m.request_id, m.file_delete_response.catalog_uuid, m.file_delete_response.success) for m in delete] == [
        ("r1", "a", True),
        ("r1", "b", True),
    ]
    [hashed] = answers_for(
        pb.EdgeMessage(request_id="r2", file_hash_request=pb.FileHashRequest(catalog_uuid="c", hash_types=["sha256", "md5"]))
    )
    assert set(hashed.file_hash_response.hashes) == {"sha256", "md5"}
    assert len(hashed.file_hash_response.hashes["md5"]) == 32 and len(hashed.file_hash_response.hashes["sha256"]) == 64
    [remap] = answers_for(
        pb.EdgeMessage(request_id="r3", file_remap_request=pb.FileRemapRequest(old_catalog_uuid="o", new_catalog_uuid="n"))
    )
    assert remap.file_remap_response.new_catalog_uuid == "n" and remap.file_remap_response.success
    shots = answers_for(
        pb.EdgeMessage(request_id="r4", screenshot_capture_request=pb.ScreenshotCaptureRequest(catalog_uuid="c", quantity=50))
    )
    assert len(shots) == 10 and all(s.screenshot_capture_response.screenshot.screenshot.startswith(b"\x89PNG") for s in shots)
    assert answers_for(pb.EdgeMessage(batch_file_offer_response=pb.BatchFileOfferResponse())) == []
    assert answers_for(pb.EdgeMessage(heartbeat=pb.Heartbeat())) == []
    assert tiny_png(1) != tiny_png(2)


def test_snapshots_merge_and_percentiles():
    a = {"peers": 2, "registered_now": 2, "max_registered": 2, "commands_received": {"x": 1}, "latency_buckets": [1, 0, 1], "latency_max_ms": 5.0, "all_registered_after_sec": 1.0}
    b = {"peers": 3, "registered_now": 1, "max_registered": 3, "commands_received": {"x": 2, "y": 1}, "latency_buckets": [0, 2, 0], "latency_max_ms": 9.0, "all_registered_after_sec": 2.5}
    merged = merge_snapshots([a, b])
    assert merged["peers"] == 5 and merged["max_registered"] == 5
    assert merged["commands_received"] == {"x": 3, "y": 1} and merged["latency_buckets"] == [1, 2, 1]
    assert merged["latency_max_ms"] == 9.0 and merged["all_registered_after_sec"] == 2.5
    assert merge_snapshots([a, {**b, "all_registered_after_sec": None}])["all_registered_after_sec"] is None
    assert latency_percentiles([0] * 61, 0.0)["p50"] is None
    percentiles = latency_percentiles([10] + [0] * 59 + [0], 0.05)
    assert percentiles == {"p50": 0.05, "p90": 0.05, "p99": 0.05, "max": 0.05}


# --- send-command ---------------------------------------------------------------------------------


def test_build_command_checks_the_contract():
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    command = build_command("p", "file_hash", '{"catalog_uuid": "c", "hash_types": ["md5"]}', request_id="r", expires_at=expires)
    assert command == {
        "peer_id": "p",
        "command_type": "file_hash",
        "command_data": {"catalog_uuid": "c", "hash_types": ["md5"]},
        "request_id": "r",
        "expires_at": "2030-01-01T00:00:00.000Z",
    }
    assert build_command("p", "file_delete", '{"catalog_uuids": []}', request_id=None, expires_at=None)["request_id"]
    for command_type, data, message in [
        ("reboot", "{}", "unknown command_type"),
        ("file_hash", "not json", "not JSON"),
        ("file_hash", "[]", "must be a JSON object"),
        ("file_hash", '{"catalog_uuid": "c"}', "needs command_data.hash_types"),
        ("screenshot_capture", '{"catalog_uuid": "c", "quantity": true, "upload_token": "t", "upload_endpoint": "u"}', "quantity must be an integer"),
        ("file_delete", '{"catalog_uuids": [1]}', "list of strings"),
    ]:
        with pytest.raises(CommandError, match=message):
            build_command("p", command_type, data, request_id=None, expires_at=None)


# --- tail -----------------------------------------------------------------------------------------


def test_tail_topics_and_rendering():
    settings = load_settings({"EDGE_ID": "e7"})
    assert resolve_topics(settings, "lifecycle,commands,deadletter,custom") == [
        "peer-lifecycle-events",
        "edge-commands-e7",
        "edge-commands-e7.deadletter",
        "custom",
    ]
    value = {"peer_id": "p", "edge_id": "e7", "timestamp": "t", "event_type": "disconnected", "reason": "timeout", "epoch": 3}
    record = TailRecord("peer-lifecycle-events", 1, 17, 1_700_000_000_123, b"p", json.dumps(value).encode())
    line = format_record(record)
    assert "peer-lifecycle-events[1]@17  p  disconnected" in line and "reason=timeout" in line and "edge_id" not in line
    shot = {"screenshot": {"frame_number_in_video": 1, "screenshot": "iVBORw0KGgo="}, "catalog_uuid": "c"}
    assert "<8 bytes>" in format_record(TailRecord("s", 0, 0, 0, None, json.dumps(shot).encode()))
    assert "not json" in format_record(TailRecord("s", 0, 0, 0, None, b"not json"))
    assert json.loads(record_json(record))["value"]["epoch"] == 3


def test_tail_reports_every_error_of_a_group():
    """Nested exception groups are opened, not cut down to their first leaf."""
    first, second, third = OSError("refused"), TimeoutError("slow"), ValueError("odd")
    group = ExceptionGroup("tail", [first, ExceptionGroup("loop", [second, third])])
    assert leaves(group) == [first, second, third]
    assert failure_lines("k:9092", leaves(group)) == [
        "tail: Kafka at k:9092: OSError: refused",
        "tail: Kafka at k:9092: TimeoutError: slow",
        "tail: Kafka at k:9092: ValueError: odd",
    ]
