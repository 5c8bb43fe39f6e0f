"""Regression: a client that closes its connection while the server is in the middle of a write.

The writer's send is shielded (half a frame must not be left on the wire), so it can still be running
when the reader sees the client's EOF and `_close` writes GOAWAY. Both used to call `send_all` at
once: trio raised BusyResourceError and the connection ended as a `grpc_connection_failed` error.
Writes now take turns. MockClock, memory streams; the server's outbound stream blocks on a gate."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from structlog.testing import capture_logs

from edge.grpc import GrpcServerConfig, GrpcServerStats, ServerStream, serve_grpc_connection
from testing.harness import server_metrics

from .support import RawH2Client, grpc_frame

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"


async def test_client_closes_while_the_server_is_writing(autojump_clock):
    client_to_server_send, client_to_server_receive = trio.testing.memory_stream_one_way_pair()
    server_to_client_send, server_to_client_receive = trio.testing.memory_stream_one_way_pair()
    gate = trio.Event()
    gate.set()
    pump = server_to_client_send.send_all_hook
    assert pump is not None

    async def gated_pump() -> None:
        await gate.wait()
        await pump()

    server_to_client_send.send_all_hook = gated_pump
    server_end = trio.StapledStream(server_to_client_send, client_to_server_receive)
    client = RawH2Client(trio.StapledStream(client_to_server_send, server_to_client_receive))

    async def echo(stream: ServerStream) -> None:
        while (message := await stream.receive_message()) is not None:
            await stream.send_message(message * 1000)

    stats = GrpcServerStats()
    config = GrpcServerConfig(host="test", port=0, ssl_context=None, shutdown_grace=5.0)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_grpc_connection, metrics=server_metrics(), stats=stats), server_end, {PATH: echo}, config)
            await client.start()
            nursery.start_soon(client.run)
            stream_id = client.open_call(PATH)
            client.send_raw(stream_id, grpc_frame(b"first"))
            await client.flush()
            with trio.fail_after(10):
                await client.wait_until(lambda: len(client.data.get(stream_id, b"")) >= 5005)
            gate = trio.Event()  # the server's next write now blocks inside send_all
            client.send_raw(stream_id, grpc_frame(b"second"))
            await client.flush()
            await trio.testing.wait_all_tasks_blocked()
            await client_to_server_send.aclose()  # the client goes away mid-write
            await trio.sleep(1)
            gate.set()
            with trio.fail_after(10):
                await stats.wait_until(lambda s: s.connections_open == 0 and s.connections_accepted == 1)
            nursery.cancel_scope.cancel()
    assert [entry for entry in logs if entry["log_level"] == "error"] == []
