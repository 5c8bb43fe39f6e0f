"""Health Watch over the transport (memory streams, MockClock): the current status first, then each
change as it happens, and the edge-wide bound on watchers answered with RESOURCE_EXHAUSTED; the calls
counted in the grpc-ecosystem metrics as a `server_stream`."""

from __future__ import annotations

import trio
import trio.testing

from edge.grpc import GrpcServerConfig, serve_grpc_connection
from edge.ops.health import NOT_SERVING, SERVING, EdgeHealth, HealthService
from edge.ops.metrics import EdgeMetrics
from edge.proto import ops as ops_pb
from tests.grpc.support import RawH2Client, grpc_frame

WATCH = "/grpc.health.v1.Health/Watch"


def statuses(client: RawH2Client, stream_id: int) -> list[int]:
    return [ops_pb.health.HealthCheckResponse.FromString(m).status for m in client.messages(stream_id)]


async def test_watch_streams_changes_and_is_bounded(autojump_clock):
    health = EdgeHealth()
    health.kafka.consumer_enabled = False
    service = HealthService(health, watchers=trio.CapacityLimiter(1))
    server_end, client_end = trio.testing.memory_stream_pair()
    config = GrpcServerConfig(host="test", port=0, ssl_context=None)
    client = RawH2Client(client_end)
    metrics = EdgeMetrics.create("e")
    request = grpc_frame(ops_pb.health.HealthCheckRequest(service="").SerializeToString())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_grpc_connection(server_end, {WATCH: service.watch}, config, metrics=metrics.grpc)
        )
        await client.start()
        nursery.start_soon(client.run)
        first = client.open_call(WATCH)
        client.send_raw(first, request, end=True)
        await client.flush()
        with trio.fail_after(5):
            await client.wait_until(lambda: statuses(client, first) == [NOT_SERVING])
            health.set_accepting(True)
            health.kafka.set_producer(True)  # ready now: one more message, no polling delay
            await client.wait_until(lambda: statuses(client, first) == [NOT_SERVING, SERVING])
            second = client.open_call(WATCH)
            client.send_raw(second, request, end=True)
            await client.flush()
            await client.wait_until(lambda: "grpc-status" in client.trailers(second))
        assert client.trailers(second)["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
        assert statuses(client, second) == []
        nursery.cancel_scope.cancel()
    labels = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
    value = lambda name, **extra: metrics.registry.get_sample_value(name, {**labels, **extra})  # noqa: E731
    assert value("grpc_server_started_total") == 2
    # The second is refused before its request is read; the first got two statuses.
    assert value("grpc_server_msg_received_total") == 1 and value("grpc_server_msg_sent_total") == 2
    assert value("grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") == 1
    assert value("grpc_server_handled_total", grpc_code="UNAVAILABLE") == 1  # the first, at shutdown
    assert value("grpc_server_handling_seconds_count") == 2
