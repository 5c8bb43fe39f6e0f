"""The committed protobuf and purerpc modules match `proto/`: regenerating them changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.proto import pb

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_is_current():
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "regen.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_field_numbers_follow_the_published_schema():
    """docs/protocol.md#messages: numbers 2-7 are those of peer_edge v0.1; heartbeat is 8."""
    peer = {f.name: f.number for f in pb.PeerMessage.DESCRIPTOR.fields}
    assert peer == {
        "request_id": 1,
        "registration_request": 2,
        "file_delete_response": 3,
        "file_hash_response": 4,
        "batch_file_offer_request": 5,
        "screenshot_capture_response": 6,
        "file_remap_response": 7,
        "heartbeat": 8,
    }
    edge = {f.name: f.number for f in pb.EdgeMessage.DESCRIPTOR.fields}
    assert edge == {
        "request_id": 1,
        "registration_response": 2,
        "file_delete_request": 3,
        "file_hash_request": 4,
        "batch_file_offer_response": 5,
        "file_remap_request": 6,
        "screenshot_capture_request": 7,
        "heartbeat": 8,
    }
    registration = {f.name: f.number for f in pb.PeerRegistrationResponse.DESCRIPTOR.fields}
    assert registration == {
        "peer_name": 1,
        "edge_name": 2,
        "success": 3,
        "heartbeat_interval_sec": 4,
        "peer_timeout_sec": 5,
        "session_id": 6,
        "error_message": 7,
    }
    assert pb.DESCRIPTOR.package == "giggityflix.edge.v1"
    assert [m.name for m in pb.DESCRIPTOR.services_by_name["PeerEdgeService"].methods] == ["Connect"]
