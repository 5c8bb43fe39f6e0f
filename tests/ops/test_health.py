"""Health: the standard gRPC health service (grpcio's own health client, over TLS) and `/readyz`
follow the Kafka bridge: NOT_SERVING / 503 while Kafka cannot be reached, SERVING / 200 once it can;
Watch streams the change without being asked again."""

from __future__ import annotations

import json
import queue
import threading

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

import edge
from testing.relay import running_relay
from testing.settings import tls_settings
from tests.ops.support import http_get

pytestmark = pytest.mark.kafka

SERVICE = "giggityflix.edge.v1.PeerEdgeService"


def _watch(channel: grpc.Channel, seen: queue.Queue, stop: threading.Event) -> None:
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    try:
        for response in call:
            seen.put(response.status)
            if stop.is_set():
                break
    except grpc.RpcError as error:
        seen.put(error.code())
    finally:
        call.cancel()


async def test_health_follows_kafka(kafka_bootstrap, kafka_supports_idempotence, kafka_topic_prefix, tls_files):
    async with running_relay(kafka_bootstrap, is_open=False) as gate, trio.open_nursery() as nursery:
        settings = tls_settings(
            tls_files,
            edge_id=kafka_topic_prefix,
            kafka_bootstrap_servers=gate.address,
            kafka_enable_idempotence=kafka_supports_idempotence,
            kafka_request_timeout_sec=5.0,
        )
        started = await nursery.start(edge.serve, settings)
        port, runtime = started.grpc_port, started.runtime
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_pem)
        channel = grpc.secure_channel(f"localhost:{port}", credentials)
        stub = health_pb2_grpc.HealthStub(channel)
        seen: queue.Queue = queue.Queue()
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(channel, seen, stop), daemon=True)
        try:
            # Kafka is down: not serving, for the whole server and for the peer service.
            for service in ("", SERVICE):
                response = await trio.to_thread.run_sync(
                    lambda service=service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                )
                assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
            status, _, body = await http_get(runtime.http_port, "/readyz")
            assert status == 503
            state = json.loads(body)
            assert state["ready"] is False and state["accepting_streams"] is True
            assert "kafka producer not connected" in state["reasons"]
            with pytest.raises(grpc.RpcError) as unknown:
                await trio.to_thread.run_sync(
                    lambda: stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
                )
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

            watcher.start()
            first = await trio.to_thread.run_sync(lambda: seen.get(timeout=10))
            assert first == health_pb2.HealthCheckResponse.NOT_SERVING

            gate.is_open = True  # Kafka comes up
            stop.set()
            second = await trio.to_thread.run_sync(lambda: seen.get(timeout=30))
            assert second == health_pb2.HealthCheckResponse.SERVING
            response = await trio.to_thread.run_sync(
                lambda: stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            status, _, body = await http_get(runtime.http_port, "/readyz")
            state = json.loads(body)
            assert status == 200
            assert state["ready"] is True and state["kafka_producer_connected"] is True and state["reasons"] == []
            status, _, body = await http_get(runtime.http_port, "/healthz")
            assert (status, body) == (200, b"ok\n")
        finally:
            stop.set()
            channel.close()
            if watcher.is_alive():
                await trio.to_thread.run_sync(watcher.join, 10)
        nursery.cancel_scope.cancel()
