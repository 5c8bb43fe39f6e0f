"""The thin slice, end to end against a real Kafka broker with a grpcio client over TLS:
register -> `connected` in Kafka; hang up -> `disconnected(stream_closed)`; and the edge embedded in a
test's own nursery, cancelled with a peer still connected -> `disconnected(shutdown)`.
"""

from __future__ import annotations

import grpc
import pytest
import trio

import edge
from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import consume_records
from testing.settings import edge_settings

pytestmark = pytest.mark.kafka


async def test_register_then_hang_up(kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files):
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    topic = settings.kafka_peer_lifecycle_events_topic
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(edge.serve, settings)).grpc_port
        peer = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
        try:
            peer.register("peer-a", catalog=["c1", "c2"], request_id="reg-42")
            reply = await peer.receive_kind("registration_response")
            response = reply.registration_response
            assert reply.request_id == "reg-42"
            assert response.success and response.peer_name == "peer-a"
            assert response.edge_name == kafka_topic_prefix
            assert response.heartbeat_interval_sec == 30 and response.peer_timeout_sec == 120

            [connected] = await consume_records(kafka_bootstrap, topic, count=1, timeout=60)
            assert connected.key == "peer-a"
            assert connected.value["event_type"] == "connected"
            assert connected.value["peer_id"] == "peer-a"
            assert connected.value["edge_id"] == kafka_topic_prefix
            assert connected.value["session_id"] == response.session_id
            assert isinstance(connected.value["epoch"], int)
            assert connected.value["timestamp"].endswith("Z")

            [catalog] = await consume_records(kafka_bootstrap, settings.kafka_peer_catalog_updates_topic, count=1)
            assert catalog.key == "peer-a"
            assert catalog.value["catalog_ids"] == ["c1", "c2"] and catalog.value["update_type"] == "full"

            peer.half_close()
            code, _details = await peer.wait_status()
            assert code == grpc.StatusCode.OK
            records = await consume_records(kafka_bootstrap, topic, count=2, timeout=30)
            assert [r.value["event_type"] for r in records] == ["connected", "disconnected"]
            gone = records[1]
            assert gone.key == "peer-a"
            assert gone.value["reason"] == "stream_closed"
            assert gone.value["session_id"] == response.session_id
            assert gone.value["epoch"] == connected.value["epoch"]
        finally:
            peer.close()
        nursery.cancel_scope.cancel()


async def test_embedded_edge_cancelled_publishes_shutdown(
    kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files
):
    """`await nursery.start(edge.serve, settings)`, then cancel the nursery with a peer connected."""
    settings = edge_settings(kafka_topic_prefix, kafka_bootstrap, tls_files, kafka_supports_idempotence)
    topic = settings.kafka_peer_lifecycle_events_topic
    peer = None
    try:
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(edge.serve, settings)).grpc_port
            peer = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
            peer.register("peer-b")
            await peer.receive_kind("registration_response")
            nursery.cancel_scope.cancel()
        code, _ = await peer.wait_status()
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        if peer is not None:
            peer.close()
    # The edge is gone: the event must already be in Kafka, flushed on the way out.
    records = await consume_records(kafka_bootstrap, topic, count=2, timeout=30)
    assert [(r.value["event_type"], r.value.get("reason")) for r in records] == [
        ("connected", None),
        ("disconnected", "shutdown"),
    ]
