"""The per-stream inbound message meter (`GrpcServerConfig.message_meter`) under MockClock: messages are
counted as they arrive, a stream over its rate gets the messages that arrived within it and then
RateLimited (RESOURCE_EXHAUSTED), the connection is then closed without reading more, and time the
server itself held a stream back is credited to the client.

Rules: in-memory streams and a raw h2 client (exact control of what arrives when), `autojump_clock` for
all timing; the meter is the product's own (`edge.peers.limits.MessageMeter`).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h2.exceptions
import trio
import trio.testing

from edge.grpc import (
    ConnectionLost,
    GrpcServerConfig,
    GrpcServerStats,
    RateLimited,
    ServerStream,
    serve_grpc_connection,
)
from edge.peers.limits import message_meter_factory
from testing.harness import server_metrics

from .support import RawH2Client, grpc_frame

PATH = "/giggityflix.edge.v1.PeerEdgeService/Connect"


def metered_config(rate: float, burst: int, **overrides: Any) -> GrpcServerConfig:
    return GrpcServerConfig(
        host="in-memory", port=0, ssl_context=None, message_meter=message_meter_factory(rate, burst), **overrides
    )


@attrs.define
class Reader:
    """A handler that reads until the stream ends, noting each message's time, and how it ended."""

    pause_after_first: float = 0.0
    times: list[float] = attrs.Factory(list)
    ended_by: BaseException | None = None

    async def __call__(self, stream: ServerStream) -> None:
        try:
            while await stream.receive_message() is not None:
                self.times.append(trio.current_time())
                if len(self.times) == 1 and self.pause_after_first:
                    await trio.sleep(self.pause_after_first)  # e.g. waiting for Kafka: not reading
        except (RateLimited, ConnectionLost) as error:
            self.ended_by = error
            raise


@asynccontextmanager
async def connection(handler: Any, config: GrpcServerConfig) -> AsyncIterator[tuple[RawH2Client, GrpcServerStats, trio.Event]]:
    server_end, client_end = trio.testing.memory_stream_pair()
    stats = GrpcServerStats()
    done = trio.Event()

    async def serve() -> None:
        await serve_grpc_connection(server_end, {PATH: handler}, config, metrics=server_metrics(), stats=stats)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = RawH2Client(client_end)
        await client.start()
        nursery.start_soon(client.run)
        yield client, stats, done
        nursery.cancel_scope.cancel()


async def send_paced(client: RawH2Client, stream_id: int, count: int, interval: float, body: bytes = b"m") -> None:
    """One message every `interval` seconds; when the stream's send window is closed, messages queue up
    on the client (as grpcio's would) and go out as soon as the server opens it again."""
    start = trio.current_time()
    frame = grpc_frame(body)
    backlog: collections.deque[bytes] = collections.deque()

    def over() -> bool:
        return client.closed or stream_id in client.ended or stream_id in client.resets

    def push() -> None:
        while backlog and client.h2.local_flow_control_window(stream_id) >= len(frame):
            client.send_raw(stream_id, backlog.popleft())

    try:
        for n in range(count):
            await trio.sleep_until(start + n * interval)
            if over():
                return
            backlog.append(frame)
            push()
            await client.flush()
        while backlog and not over():
            await client.wait_until(lambda: over() or client.h2.local_flow_control_window(stream_id) >= len(frame))
            if over():
                return
            push()
            await client.flush()
    except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the server ended the stream or the connection while we were sending


async def test_a_client_at_its_rate_is_never_cut_off(autojump_clock: Any) -> None:
    """100 msg/s, burst 10: 3000 messages at exactly 100/s (30 s of mock time) all arrive."""
    reader = Reader()
    async with connection(reader, metered_config(100.0, 10)) as (client, _, _):
        stream_id = client.open_call(PATH)
        await send_paced(client, stream_id, 3000, 0.01)
        client.h2.end_stream(stream_id)
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
    assert len(reader.times) == 3000 and reader.ended_by is None
    assert client.trailers(stream_id)["grpc-status"] == "0"


async def test_a_client_over_its_rate_is_cut_off_at_burst_plus_rate_times_elapsed(autojump_clock: Any) -> None:
    """100 msg/s, burst 10, a client at 333/s: message n arrives at 3n ms with 10 + 100 x 0.003n - n =
    10 - 0.7n tokens, so messages 0..12 are taken and message 13 (at 39 ms) is over. The handler gets
    those 13 and then RateLimited; the client gets RESOURCE_EXHAUSTED saying why; the connection is then
    closed."""
    reader = Reader()
    async with connection(reader, metered_config(100.0, 10)) as (client, stats, done):
        start = trio.current_time()
        stream_id = client.open_call(PATH)
        await send_paced(client, stream_id, 1000, 0.003)
        with trio.fail_after(30):
            await done.wait()
            await client.wait_closed()
    assert len(reader.times) == 13
    assert reader.times[-1] - start < 0.039
    assert isinstance(reader.ended_by, RateLimited)
    trailers = client.trailers(stream_id)
    assert trailers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    assert trailers["grpc-message"] == "more than 100 messages per second (burst 10): slow down"
    assert stats.statuses["RESOURCE_EXHAUSTED"] == 1 and stats.connections_open == 0


async def test_time_the_server_held_the_stream_back_is_credited(autojump_clock: Any) -> None:
    """100 msg/s, burst 10, 1 KiB messages, a 16 KiB stream window. The handler takes one message and
    then does not read for 10 s: the stream's queue and window fill and the client, still producing
    100/s, builds a backlog of about a thousand messages, which arrive as fast as the window lets them
    when the handler reads again. That burst is the server's doing: the client is not cut off, and
    every message arrives."""
    reader = Reader(pause_after_first=10.0)
    config = metered_config(100.0, 10, stream_window_bytes=16 * 1024, stream_inbound_queue=4)
    async with connection(reader, config) as (client, _, _):
        stream_id = client.open_call(PATH)
        await send_paced(client, stream_id, 1500, 0.01, body=b"x" * 1024)
        client.h2.end_stream(stream_id)
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
    assert reader.ended_by is None and len(reader.times) == 1500
    resumed = [t for t in reader.times[1:] if t - reader.times[0] >= 10.0]
    first_100_ms = sum(1 for t in resumed if t - resumed[0] < 0.1)
    assert first_100_ms > 100  # the backlog really came fast: burst + rate x 0.1 s would allow 20


async def test_a_burst_after_the_clients_own_silence_is_not_credited(autojump_clock: Any) -> None:
    """The same burst without the server holding anything back (the client was silent for 10 s, then
    sent 500 at once) is over the limit: the handler gets the burst of 10 (and no more), then RateLimited."""
    reader = Reader()
    async with connection(reader, metered_config(100.0, 10)) as (client, _, _):
        stream_id = client.open_call(PATH)
        await client.flush()
        await trio.sleep(10)
        for _ in range(500):
            client.send_raw(stream_id, grpc_frame(b"m"))
        await client.flush()
        await client.wait_until(lambda: stream_id in client.ended)
    assert len(reader.times) == 10 and isinstance(reader.ended_by, RateLimited)
