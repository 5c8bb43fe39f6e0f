"""`/metrics` as Prometheus reads it (prometheus-client's own parser), moving as a real grpcio peer
over TLS registers, talks, receives a command and leaves, and as commands that cannot be delivered
are dead-lettered, with the real Kafka bridge producing and consuming."""

from __future__ import annotations

import grpc
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import edge
from edge.proto import pb
from testing.grpcio_peer import GrpcioPeer
from testing.kafka.client import consume_records, produce_records
from testing.settings import tls_settings
from tests.ops.support import http_get

pytestmark = pytest.mark.kafka


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200 and {k.lower(): v for k, v in headers.items()}["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_traffic(kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files):
    lifecycle = f"{kafka_topic_prefix}-lifecycle"
    catalog = f"{kafka_topic_prefix}-catalog"
    settings = tls_settings(
        tls_files,
        edge_id=kafka_topic_prefix,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_enable_idempotence=kafka_supports_idempotence,
        kafka_peer_lifecycle_events_topic=lifecycle,
        kafka_peer_presence_topic=f"{lifecycle}-presence",
        kafka_peer_catalog_updates_topic=catalog,
        kafka_group_id=kafka_topic_prefix,
        retry_max_retries=0,
    )
    async with trio.open_nursery() as nursery:
        started = await nursery.start(edge.serve, settings)
        port, runtime = started.grpc_port, started.runtime
        before = await scrape(runtime.http_port)
        assert value(before, "giggityflix_edge_info", edge_id=kafka_topic_prefix, version=edge.__version__) == 1
        assert value(before, "giggityflix_edge_sessions_started_total") == 0
        assert value(before, "giggityflix_edge_event_buffer_capacity") == settings.kafka_event_buffer_size

        peer = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
        try:
            peer.register("metrics-peer", catalog=["c1"])
            await peer.receive_kind("registration_response")
            peer.send(pb.PeerMessage(heartbeat=pb.Heartbeat(sent_at_unix_ms=1)))
            peer.send(pb.PeerMessage(request_id="o1", batch_file_offer_request=pb.BatchFileOfferRequest(category_type="movie")))
            await consume_records(kafka_bootstrap, catalog, count=2, timeout=60)  # full catalog + offer produced
            command = {"peer_id": "metrics-peer", "command_type": "file_remap", "request_id": "cmd-1",
                       "command_data": {"old_catalog_uuid": "c1", "new_catalog_uuid": "c2"}}
            absent = {**command, "peer_id": "nobody", "request_id": "cmd-2"}
            await produce_records(
                kafka_bootstrap,
                settings.commands_topic,
                [("metrics-peer", command), ("nobody", absent), ("metrics-peer", "not json")],
            )
            delivered = await peer.receive_kind("file_remap_request", timeout=60)
            assert delivered.request_id == "cmd-1"
            await consume_records(kafka_bootstrap, settings.deadletter_topic, count=2, timeout=60)
            with trio.fail_after(30):
                while value(during := await scrape(runtime.http_port), "giggityflix_edge_commands_dead_lettered_total", reason="invalid_json") < 1:
                    await trio.sleep(0.05)
            peer.half_close()
            code, _ = await peer.wait_status()
            assert code == grpc.StatusCode.OK
        finally:
            peer.close()
        await consume_records(kafka_bootstrap, lifecycle, count=2, timeout=60)
        with trio.fail_after(30):
            while value(after := await scrape(runtime.http_port), "giggityflix_edge_events_produced_total", topic=lifecycle) < 2:
                await trio.sleep(0.05)

        bad = GrpcioPeer(port, root_certificates=tls_files.ca_pem)
        try:
            bad.register("not a valid id!")
            code, _ = await bad.wait_status()
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            bad.close()
        refused = await scrape(runtime.http_port)
        nursery.cancel_scope.cancel()

    assert value(during, "giggityflix_edge_peers_connected") == 1
    assert value(during, "giggityflix_edge_kafka_connected", client="producer") == 1
    assert value(during, "giggityflix_edge_ready") == 1 and value(during, "giggityflix_edge_accepting_streams") == 1
    assert value(during, "giggityflix_edge_grpc_connections_open") >= 1
    assert value(during, "giggityflix_edge_grpc_streams_open") == 1
    assert value(during, "giggityflix_edge_messages_received_total", kind="registration_request") == 1
    assert value(during, "giggityflix_edge_messages_received_total", kind="heartbeat") == 1
    assert value(during, "giggityflix_edge_messages_received_total", kind="batch_file_offer_request") == 1
    assert value(during, "giggityflix_edge_messages_sent_total", kind="registration_response") == 1
    assert value(during, "giggityflix_edge_events_produced_total", topic=catalog) == 2
    assert value(during, "giggityflix_edge_commands_received_total") == 3
    assert value(during, "giggityflix_edge_commands_delivered_total", command_type="file_remap") == 1
    assert value(during, "giggityflix_edge_messages_sent_total", kind="file_remap_request") == 1
    assert value(during, "giggityflix_edge_command_delivery_latency_seconds_count") == 1
    assert value(during, "giggityflix_edge_commands_dead_lettered_total", reason="peer_not_connected") == 1
    assert value(during, "giggityflix_edge_commands_dead_lettered_total", reason="invalid_json") == 1
    assert value(during, "giggityflix_edge_kafka_connected", client="consumer") == 1

    assert value(after, "giggityflix_edge_sessions_started_total") == 1
    assert value(after, "giggityflix_edge_sessions_ended_total", reason="stream_closed") == 1
    assert value(after, "giggityflix_edge_sessions_ended_total", reason="shutdown") == 0
    assert value(after, "giggityflix_edge_peers_connected") == 0
    assert value(after, "giggityflix_edge_events_produced_total", topic=lifecycle) == 2
    produce_batches = value(after, "giggityflix_edge_kafka_produce_latency_seconds_count")
    assert produce_batches >= 2
    assert value(after, "giggityflix_edge_kafka_produce_latency_seconds_bucket", le="+Inf") == produce_batches
    assert value(after, "giggityflix_edge_event_backpressure_seconds_total") == 0

    assert value(refused, "giggityflix_edge_registrations_refused_total", cause="invalid") == 1
    assert value(refused, "giggityflix_edge_sessions_started_total") == 1

    # The same calls in the grpc-ecosystem shape: two Connect streams, one ended OK by the peer's
    # half-close, one refused; messages both ways (the refusal's registration response included).
    connect = {"grpc_type": "bidi_stream", "grpc_service": "giggityflix.edge.v1.PeerEdgeService", "grpc_method": "Connect"}
    assert value(refused, "grpc_server_started_total", **connect) == 2
    assert value(refused, "grpc_server_handled_total", **connect, grpc_code="OK") == 1
    assert value(refused, "grpc_server_handled_total", **connect, grpc_code="INVALID_ARGUMENT") == 1
    assert value(refused, "grpc_server_msg_received_total", **connect) == 4  # 2 registrations, heartbeat, offer
    assert value(refused, "grpc_server_msg_sent_total", **connect) == 3  # 2 registration responses, command
    assert value(refused, "grpc_server_handling_seconds_count", **connect) == 2
    assert value(refused, "giggityflix_edge_grpc_tls_handshake_failures_total", cause="tls_error") == 0
